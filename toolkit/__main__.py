"""``python -m toolkit`` is the ``nbcron`` command."""

from toolkit.cli import main

main()
