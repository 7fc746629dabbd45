"""``python -m flowstone``: the same as the ``flowstone`` command."""

import sys

from flowstone.cli import main

if __name__ == "__main__":
    sys.exit(main())
