"""``python -m fleet.agent``: the same as the ``fleet-agent`` console script."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
