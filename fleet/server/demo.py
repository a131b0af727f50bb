"""``fleet-server --demo N``: N real agents in this process, registered as ``demo-1..N``."""

from __future__ import annotations

import trio

from fleet.agent.config import AgentConfig, Secret
from fleet.agent.run import run_agent
from fleet.core import ValidationError

from .agents import hash_secret, new_secret
from .config import ServerConfig
from .http.common import Services
from .store import Store

__all__ = ["run_agents"]


async def _register(services: Services, name: str) -> tuple[int, str]:
    """Create (or re-key) the demo VPS ``name``; return its id and a fresh secret."""
    secret = new_secret()
    digest = hash_secret(secret)
    try:
        record = await services.db.run(Store.create_vps, name, ["demo"], digest)
    except ValidationError:  # already there from an earlier run: issue a new secret
        existing = {v.name: v for v in await services.db.run(Store.list_vps)}
        record = existing[name]
        await services.db.run(Store.set_vps_secret, record.id, digest)
    services.credentials.set(record.id, digest)
    return record.id, secret


async def run_agents(
    config: ServerConfig,
    services: Services,
    *,
    task_status: trio.TaskStatus[list[int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Register and run ``config.demo`` agents until cancelled.

    ``started()`` gets the VPS ids once every agent's first handshake succeeded (bounded by
    30 s; later ones keep trying in the background).
    """
    ids: list[int] = []
    all_online = trio.Event()

    def check(_vps_id: int, _online: bool) -> None:
        if ids and all(services.registry.is_online(i) for i in ids):
            all_online.set()

    # Each demo agent keeps its journal here, like a real one in /var/lib/fleet-agent.
    journals = (config.data_dir / "demo-agents").absolute()
    await trio.Path(journals).mkdir(mode=0o700, exist_ok=True)
    async with trio.open_nursery() as nursery:
        with services.registry.subscribe(check):
            for i in range(1, config.demo + 1):
                vps_id, secret = await _register(services, f"demo-{i}")
                ids.append(vps_id)
                agent = AgentConfig(
                    server=services.grpc_address,
                    vps_id=vps_id,
                    secret=Secret(secret),
                    log_level=config.log_level,
                    # With --tls-cert, a demo agent trusts that certificate (self-signed is fine).
                    tls=config.tls,
                    ca_file=config.tls_cert,
                    state_dir=journals / f"vps-{vps_id}",
                )
                nursery.start_soon(run_agent, agent)
            check(0, True)
            with trio.move_on_after(30):
                await all_online.wait()
        task_status.started(ids)
