"""``python -m postoffice``: the same as the ``postoffice`` command."""

from postoffice.cli import main

main()
