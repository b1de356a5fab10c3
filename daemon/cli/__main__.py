"""``python -m livetomo.daemon.cli`` is the ``livetomo`` command."""

import sys

from . import main

sys.exit(main())
