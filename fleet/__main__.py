"""``python -m fleet``: the ``fleet`` CLI."""

from __future__ import annotations

import sys

from fleet.cli.main import main

sys.exit(main())
