"""Console output: Rich on stderr, so stdout carries only results."""

from __future__ import annotations

from rich.console import Console

console = Console(stderr=True, highlight=False)


def info(message: str) -> None:
    """Print a progress/information line on stderr."""
    console.print(message, markup=False)
