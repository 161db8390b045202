"""One error type for every bad input: the CLI prints it as a single line and exits 2."""

from __future__ import annotations

from pathlib import Path


class VislabError(Exception):
    """A user-facing error about one path (or none).

    Example:
        >>> str(VislabError("runs/p1", "no checkpoint found"))
        'runs/p1: no checkpoint found'
    """

    def __init__(self, path: str | Path | None, message: str) -> None:
        self.path = None if path is None else str(path)
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path else message)

    def __reduce__(self):  # survives the trip back from a worker process
        return (VislabError, (self.path, self.message))


class CannotWrite(VislabError):
    """An output that cannot be written where it goes (no permission, a file in place of its
    folder, a folder in its place): what a cache catches to carry on in memory."""


def yaml_problem(exc: Exception) -> str:
    """A YAML parse error in words, with its line and column when the parser gives them:
    ``not valid YAML (line 3, column 7: expected ',' or ']', but got '<stream end>')``."""
    problem = getattr(exc, "problem", None) or next(iter(str(exc).splitlines()), "") or type(exc).__name__
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"not valid YAML ({where}{problem})"


class Interrupted(Exception):
    """Ctrl-C during training, after Lightning's graceful shutdown; the CLI exits with 130. The
    message names the run folder and how to go on.

    (Typer turns a KeyboardInterrupt into a silent exit, and Lightning into ``sys.exit(1)``.)
    """


class Diverged(Exception):
    """Training stopped because its loss stopped being a number (NaN or infinite): the weights are
    then no longer numbers either, so no later epoch could recover. The CLI exits with status 1."""


def spawned_vislab_error(exc: BaseException) -> tuple[str, bool] | None:
    """For a ``ddp_spawn`` worker's error (which comes back as its traceback's text) that is one
    of vislab's own (:class:`VislabError` or a subclass, :class:`Diverged`): its words and
    whether it is a bad input (exit status 2, as in one process); else None."""
    if type(exc).__name__ != "ProcessRaisedException":
        return None
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    kind, _, words = (lines[-1] if lines else "").partition(": ")
    module, _, name = kind.rpartition(".")
    if not words or not module.startswith("vislab."):
        return None
    import importlib

    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None
    if not isinstance(cls, type) or not issubclass(cls, (VislabError, Diverged)):
        return None
    return words, issubclass(cls, VislabError)


def failure_line(exc: BaseException) -> str:
    """The one line a failure is told in, on the console and in a run folder (``failed.json``): a
    bad input's own words; an interruption; running out of memory (torch.cuda's, Python's, and
    torch's on the CPU, a RuntimeError) with what to try; else the error's type and first line.

    Example:
        >>> failure_line(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried 9 GB"))
        'out of memory; try a smaller --batch-size (or --image-size / --crop-size)'
    """
    if isinstance(exc, (VislabError, Diverged)):
        return str(exc)
    if isinstance(exc, Interrupted):
        return f"interrupted ({exc})"
    if isinstance(exc, KeyboardInterrupt) or type(exc).__name__ == "Abort":  # click turns Ctrl-C into Abort
        return "interrupted; a training run that wrote last.ckpt continues with --resume"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    spawned = type(exc).__name__ == "ProcessRaisedException"  # a ddp_spawn worker's error: its traceback as text
    first = (lines[-1] if spawned else lines[0]) if lines else ""  # the worker's own error is its traceback's last line
    if type(exc).__name__ in ("OutOfMemoryError", "MemoryError") or "can't allocate memory" in str(exc) or \
            first.split(":")[0].endswith(("OutOfMemoryError", "MemoryError")):
        return "out of memory; try a smaller --batch-size (or --image-size / --crop-size)"
    own = spawned_vislab_error(exc)
    if own is not None:
        return own[0]  # a worker's own line, as the process itself would have said it
    return f"internal error in a training process: {first}" if spawned else \
        f"internal error: {type(exc).__name__}: {first}"
