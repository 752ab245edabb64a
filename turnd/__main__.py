"""``python -m turnd``: the same as the ``turnd`` command."""

from turnd.cli import main

main()
