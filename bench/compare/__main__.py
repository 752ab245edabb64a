"""``python -m bench.compare``: see the package docstring, or ``--help``."""

from bench.compare.cli import main

if __name__ == "__main__":
    main()
