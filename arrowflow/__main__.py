"""``python -m arrowflow``: the ``arrowflow`` command line, for environments without the script."""

import sys

from arrowflow.cli import main

if __name__ == "__main__":
    sys.exit(main())
