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
