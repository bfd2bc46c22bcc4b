"""``python -m fedkd`` is the ``fedkd`` command."""

from fedkd.entry import main

main()
