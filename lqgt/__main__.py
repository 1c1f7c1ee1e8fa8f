"""``python -m lqgt``: the ``lqgt`` command line (:func:`lqgt.cli.main`)."""

import sys

from .cli import main

if __name__ == "__main__":  # pragma: no branch
    sys.exit(main())
