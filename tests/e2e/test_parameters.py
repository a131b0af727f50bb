"""Script parameters through real processes: a ``fleet-server`` and a ``fleet-agent`` started as
commands. A hostile value reaches the command verbatim, as an environment variable, and runs
nothing; the secret one is never written anywhere on the server's side."""

from __future__ import annotations

from pathlib import Path

import trio

from .conftest import ServerProcess, start_agent, stop
from .test_processes import _wait_final, _wait_online

HOSTILE = "$(touch pwned); '\"`touch pwned2`;\n$FLEET_PARAM_SECRET | rm -rf ./nothing"


async def test_a_hostile_parameter_reaches_the_command_verbatim_and_runs_nothing(
    fleet_server: ServerProcess, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    with trio.fail_after(60):
        async with fleet_server.client() as client:
            vps = (await client.post("/api/vps", json={"name": "p1"})).json()
            agent = await start_agent(fleet_server, vps, tmp_path)
            try:
                await _wait_online(client, vps["id"])
                script = await client.post(
                    "/api/scripts",
                    json={
                        "name": "show",
                        "content": 'printf "%s" "$FLEET_PARAM_VALUE" > value.out\n'
                        'printf "%s" "$FLEET_PARAM_SECRET" > secret.out\n',
                        "parameters": [
                            {"name": "VALUE", "required": True},
                            {"name": "SECRET", "secret": True},
                        ],
                    },
                )
                assert script.status_code == 201, script.text
                r = await client.post(
                    "/api/batch_commands",
                    json={
                        "script_id": script.json()["id"],
                        "target_vps_ids": [vps["id"]],
                        "working_directory": str(work),
                        "parameters": {"VALUE": HOSTILE, "SECRET": "s3cr3t-e2e-value"},
                    },
                )
                assert r.status_code == 202, r.text
                batch = await _wait_final(client, r.json()["batch_command_id"])
                assert batch["overall_status"] == "COMPLETED_SUCCESSFULLY", batch
                assert batch["parameters"] == {"VALUE": HOSTILE, "SECRET": "***"}
            finally:
                assert await stop(agent) == 0
    assert (work / "value.out").read_text() == HOSTILE
    assert (work / "secret.out").read_text() == "s3cr3t-e2e-value"
    assert sorted(p.name for p in work.iterdir()) == ["secret.out", "value.out"]  # no "pwned"
    assert await stop(fleet_server.process) == 0
    for path in fleet_server.data_dir.rglob("*"):
        if path.is_file():
            assert b"s3cr3t-e2e-value" not in path.read_bytes(), path
