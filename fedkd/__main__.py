"""``python -m fedkd`` is the ``fedkd`` command."""

from fedkd.cli import main

main()
