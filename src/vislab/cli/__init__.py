"""The ``vislab`` command: parses arguments, calls the library, prints results. Nothing else.

Modules: ``common`` (the app, its groups and what the commands share), ``tools`` (models,
recipes, summary, export, report, demo, runs, cache), ``classify`` (``cls``) and ``segment``
(``seg``); this one registers them and runs the command line."""

from __future__ import annotations

import sys

import typer
from typer.core import TyperCommand

from vislab.cli import classify, segment, tools  # noqa: F401 - their commands register on import
from vislab.cli.common import CLICK, OnceCommand, OnceGroup, _recipe, app, cls_app, out, seg_app
from vislab.cli.tools import cache_app
from vislab.errors import Interrupted, VislabError, failure_line, spawned_vislab_error
from vislab.log import once_each

__all__ = ["CLICK", "OnceCommand", "OnceGroup", "_recipe", "app", "main", "out"]  # what tests and callers use


def _one_line_summaries(*apps: typer.Typer) -> None:
    """A command's line in its group's list is its docstring's first paragraph on one line (Typer
    would keep the docstring's own line breaks there, cutting sentences mid-way)."""
    for group in apps:
        for command in group.registered_commands:
            doc = command.help or (command.callback.__doc__ if command.callback else None)
            if command.short_help is None and doc:
                command.short_help = " ".join(doc.strip().split("\n\n")[0].split())


_one_line_summaries(app, cls_app, seg_app, cache_app)


def _options_once(*apps: typer.Typer) -> None:
    """Every command refuses a single-valued option given twice (:class:`OnceCommand`); one
    declared with a class of its own must be an :class:`OnceCommand` too."""
    for group in apps:
        for command in group.registered_commands:
            if command.cls in (None, TyperCommand):  # Typer's default
                command.cls = OnceCommand
            assert issubclass(command.cls, OnceCommand), f"{command.name}: not an OnceCommand"


_options_once(app, cls_app, seg_app, cache_app)


def main() -> None:
    """Console entry point: one line and exit status 2 for every bad input; one line and status 1
    for any other failure (``--debug`` shows the traceback)."""
    debug = "--debug" in sys.argv[1:]
    if sys.argv[1:].count("--debug") == 1:  # the app's flag, honoured wherever it stands: `vislab cls eval ... --debug`
        sys.argv = [sys.argv[0], "--debug", *(a for a in sys.argv[1:] if a != "--debug")]
    try:
        with once_each():  # a note on a folder that the command reads twice is said once
            code = app(standalone_mode=False, prog_name="vislab")
    except CLICK.exceptions.UsageError as exc:  # a missing argument, an unknown option, a value of the wrong type
        message = " ".join(exc.format_message().split())
        if not message:  # a command group called without a command: its help, as Typer shows it
            exc.show()
            sys.exit(exc.exit_code)
        command = exc.ctx.command_path if exc.ctx is not None else "vislab"
        if "unexpected extra argument" in message and command.endswith(" train"):  # a validation folder after the training one
            message += "; a validation folder goes with --val-dir"
        print(f"vislab: error: {message} (see `{command} --help`)", file=sys.stderr)
        sys.exit(2)
    except VislabError as exc:
        if debug:
            raise
        print(f"vislab: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except (KeyboardInterrupt, Interrupted, typer.Abort) as exc:  # click turns Ctrl-C into Abort
        if debug:
            raise
        print(f"vislab: {failure_line(exc)}", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - a case no check names yet: still one line, status 1
        if debug:
            raise
        line = failure_line(exc)
        own = spawned_vislab_error(exc)
        if own is not None and own[1]:  # a bad input found in a training process: as in one process
            print(f"vislab: error: {line}", file=sys.stderr)
            sys.exit(2)
        print(f"vislab: {line}" + (" (rerun with --debug for the traceback, and please report it)"
                                   if line.startswith("internal error") else ""), file=sys.stderr)
        sys.exit(1)
    if isinstance(code, int) and code:  # --help and --version return 0; a command's own exit status
        sys.exit(code)
