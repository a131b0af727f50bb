"""Fleet's server: REST API, live feed, agent RPC, batch supervisor and store.

The server needs Python 3.11 or newer (Quart 0.22, ``except*``, ``datetime.UTC``); the agent
and the ``fleet`` CLI run on 3.10. On an older Python, importing this package (and so
``fleet-server`` or ``python -m fleet.server``) prints one line saying so and exits with
status 2, instead of a traceback from deep inside a dependency.
"""

from __future__ import annotations

import sys

if sys.version_info < (3, 11):  # pragma: no cover - exercised by `nox -s agent310`
    sys.stderr.write(
        "fleet-server: needs Python 3.11 or newer, this is Python "
        f"{sys.version_info[0]}.{sys.version_info[1]}"
        " (the agent and the fleet CLI run on 3.10)\n"
    )
    raise SystemExit(2)
