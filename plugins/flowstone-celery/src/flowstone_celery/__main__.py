"""``python -m flowstone_celery worker ...`` (the same as ``flowstone worker``)."""

from __future__ import annotations

import sys

from flowstone_celery.cli import main

if __name__ == "__main__":
    sys.exit(main())
