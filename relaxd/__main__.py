"""``python -m relaxd`` runs the ``relaxd`` command."""

import sys

from relaxd.cli import main

sys.exit(main())
