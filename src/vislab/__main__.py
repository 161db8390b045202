"""``python -m vislab`` is the ``vislab`` command."""

from vislab.cli import main

main()
