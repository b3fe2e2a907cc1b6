"""``python -m adam_ext.cli`` runs the ``adam`` command."""

import sys

from . import main

sys.exit(main())
