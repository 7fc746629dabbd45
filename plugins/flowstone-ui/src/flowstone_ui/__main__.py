"""``python -m flowstone_ui``: the same as ``flowstone ui``."""

import sys

from flowstone_ui.cli import main

sys.exit(main())
