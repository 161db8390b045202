"""Console output: Rich on stderr, so stdout carries only results."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from rich.console import Console

console = Console(stderr=True, highlight=False, soft_wrap=True)  # lines unbroken: paths stay whole in logs


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and the noun in the number it takes: "1 mask", "3 masks" (``plural`` when not noun + s)."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def info(message: str) -> None:
    """Print a progress/information line on stderr."""
    console.print(message, markup=False)


_said: set[str] | None = None  # inside once_each(): the info_once lines already printed


def info_once(message: str) -> None:
    """:func:`info`, except that inside :func:`once_each` a line already printed there is not
    printed again (a command that reads one folder twice, before training and after it, says
    what it noticed of the folder once)."""
    if _said is not None and not console.quiet:  # a line held back by quiet() is not said yet
        if message in _said:
            return
        _said.add(message)
    info(message)


@contextmanager
def once_each() -> Iterator[None]:
    """A scope (one command) inside which :func:`info_once` prints each line once."""
    global _said
    outer = _said
    _said = set() if outer is None else outer
    try:
        yield
    finally:
        _said = outer


@contextmanager
def quiet() -> Iterator[None]:
    """Hold back :func:`info` lines (a check that repeats work the run does again and reports)."""
    before, console.quiet = console.quiet, True
    try:
        yield
    finally:
        console.quiet = before
