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


@contextmanager
def quiet() -> Iterator[None]:
    """Hold back :func:`info` lines (a check that repeats work the run does again and reports)."""
    before, console.quiet = console.quiet, True
    try:
        yield
    finally:
        console.quiet = before
