"""Safe rollouts over REST with real agents: parameters reach the command only as
environment, secrets are masked and never stored, concurrency holds, tags, re-run, bad input."""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path
from typing import Any

import httpx
import trio

from fleet.agent.config import AgentConfig
from fleet.agent.run import run_agent
from fleet.server.serve import Endpoints

from .conftest import add_vps, task_of, wait_batch
from .test_real_agents import run_batch, start_agents

HOSTILE = "$(touch pwned); '\"`touch pwned2` && rm -rf nothing"


async def test_a_parameter_reaches_the_command_verbatim_and_runs_nothing(
    server: Endpoints, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            vps = await start_agents(nursery, server, client, ["p1"])
            script = await client.post(
                "/api/scripts",
                json={
                    "name": "show",
                    "content": 'printf "%s" "$FLEET_PARAM_VALUE" > value.out\n'
                    'printf "%s" "$FLEET_PARAM_TOKEN" > token.out\n'
                    'printf "%s" "$FLEET_PARAM_MODE" > mode.out\n',
                    "parameters": [
                        {"name": "VALUE", "required": True},
                        {"name": "TOKEN", "secret": True, "required": True},
                        {"name": "MODE", "default": "safe", "pattern": "safe|fast"},
                    ],
                },
            )
            assert script.status_code == 201, script.text
            assert script.json()["parameters"][1]["secret"] is True
            response = await client.post(
                "/api/batch_commands",
                json={
                    "script_id": script.json()["id"],
                    "target_vps_ids": [vps[0]["id"]],
                    "working_directory": str(workdir),
                    "parameters": {"VALUE": HOSTILE, "TOKEN": "hunter2-secret"},
                },
            )
            assert response.status_code == 202, response.text
            batch = await wait_batch(server, response.json()["batch_command_id"])
            assert batch["overall_status"] == "COMPLETED_SUCCESSFULLY", batch
            nursery.cancel_scope.cancel()
    assert (workdir / "value.out").read_text() == HOSTILE
    assert (workdir / "token.out").read_text() == "hunter2-secret"
    assert (workdir / "mode.out").read_text() == "safe"
    assert not (workdir / "pwned").exists()
    assert not (workdir / "pwned2").exists()
    assert batch["parameters"] == {"VALUE": HOSTILE, "TOKEN": "***", "MODE": "safe"}
    assert HOSTILE not in batch["command_content"]
    got = (await client.get(f"/api/batch_commands/{batch['batch_command_id']}")).json()
    assert got["parameters"]["TOKEN"] == "***"
    # Never stored: not in the database files (WAL included), not in any log.
    data_dir = server.services.config.data_dir
    for path in data_dir.rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert b"hunter2-secret" not in path.read_bytes(), path


async def test_parameters_are_checked_and_every_error_named(client: httpx.AsyncClient) -> None:
    vps = await add_vps(client, "pc")
    bad_script = await client.post(
        "/api/scripts",
        json={"name": "bad", "content": "true", "parameters": [{"name": "X", "pattern": "("}]},
    )
    assert bad_script.status_code == 422
    assert "not a valid regular expression" in bad_script.text
    script = await client.post(
        "/api/scripts",
        json={
            "name": "s",
            "content": "true",
            "parameters": [{"name": "V", "required": True, "pattern": "[0-9]+"}],
        },
    )
    sid = script.json()["id"]
    response = await client.post(
        "/api/batch_commands",
        json={
            "script_id": sid,
            "target_vps_ids": [vps["id"]],
            "parameters": {"V": "x1", "W": "1", "bad-name": "1", "N": "a\u0000b", "B": "x" * 4097},
        },
    )
    assert response.status_code == 422
    text = response.text
    for needle in ("bad-name", "parameters.N", "parameters.B"):
        assert needle in text
    response = await client.post(
        "/api/batch_commands",
        json={"script_id": sid, "target_vps_ids": [vps["id"]], "parameters": {"V": "x", "W": "1"}},
    )
    assert response.status_code == 422
    fields = {e["field"] for e in response.json()["detail"]}
    assert fields == {"parameters.V", "parameters.W"}
    response = await client.post(
        "/api/batch_commands", json={"script_id": sid, "target_vps_ids": [vps["id"]]}
    )
    assert response.status_code == 422
    assert "is required" in response.text


async def test_rollout_options_over_rest(server: Endpoints, client: httpx.AsyncClient) -> None:
    """Three real agents, one slot: the commands ran one after the other."""
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            vps = await start_agents(nursery, server, client, ["r1", "r2", "r3"])
            batch_id = await run_batch(
                client, "sleep 0.2", vps, max_concurrency=1, max_errors="50%"
            )
            batch = await wait_batch(server, batch_id)
            nursery.cancel_scope.cancel()
    assert batch["overall_status"] == "COMPLETED_SUCCESSFULLY"
    assert (batch["max_concurrency"], batch["max_errors"]) == (1, "50%")
    assert batch["wait_for_agent_seconds"] == 0
    assert batch["stop_reason"] is None
    spans = sorted(
        (dt.datetime.fromisoformat(t["agent_started_at"]), dt.datetime.fromisoformat(
            t["agent_completed_at"])) for t in batch["tasks"]
    )  # fmt: skip
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end


async def test_error_threshold_over_rest(server: Endpoints, client: httpx.AsyncClient) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            vps = await start_agents(nursery, server, client, ["e1", "e2", "e3"])
            batch_id = await run_batch(client, "exit 3", vps, max_concurrency=1, max_errors=0)
            batch = await wait_batch(server, batch_id)
            nursery.cancel_scope.cancel()
    assert batch["overall_status"] == "COMPLETED_WITH_ERRORS"
    assert batch["counts"] == {"FAILURE": 1, "SKIPPED": 2}
    assert batch["skipped"] == 2
    assert batch["stop_reason"].startswith("error threshold reached")
    listed = (await client.get("/api/batch_commands")).json()["items"][0]
    assert listed["stop_reason"] == batch["stop_reason"]
    assert listed["skipped"] == 2


async def test_a_target_waits_for_its_agent(server: Endpoints, client: httpx.AsyncClient) -> None:
    vps = await add_vps(client, "late")
    with trio.fail_after(30):
        batch_id = await run_batch(client, "echo late", [vps], wait_for_agent_seconds=600)
        batch = await wait_batch(server, batch_id, lambda b: b["waiting_for_agent"] == 1)
        task = task_of(batch, "late")
        assert task["status"] == "PENDING"
        assert task["waiting_until"] is not None
        async with trio.open_nursery() as nursery:
            config = AgentConfig.for_test(
                server.grpc_address, vps_id=vps["id"], secret=vps["agent_secret"]
            )
            await nursery.start(run_agent, config)
            batch = await wait_batch(server, batch_id)
            nursery.cancel_scope.cancel()
    assert batch["overall_status"] == "COMPLETED_SUCCESSFULLY"
    assert task_of(batch, "late")["output_stream_summary"] == ["late"]


async def test_tags_and_rerun(server: Endpoints, client: httpx.AsyncClient) -> None:
    web1 = await add_vps(client, "web1", ["web"])
    web2 = await add_vps(client, "web2", ["web", "eu"])
    db = await add_vps(client, "db1", ["db"])
    other = await add_vps(client, "other", [])
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for v in (web1, web2, db):
                config = AgentConfig.for_test(
                    server.grpc_address, vps_id=v["id"], secret=v["agent_secret"]
                )
                await nursery.start(run_agent, config)
            response = await client.post(
                "/api/batch_commands",
                json={
                    "command_content": 'test "$FLEET_PARAM_N" = 1',
                    "target_tags": ["web", "db"],
                    "target_vps_ids": [other["id"]],
                    "parameters": {"N": "1", "S": "secret-value"},
                },
            )
            assert response.status_code == 202, response.text
            first = await wait_batch(server, response.json()["batch_command_id"])
            names = sorted(t["vps_name"] for t in first["tasks"])
            assert names == ["db1", "other", "web1", "web2"]
            assert first["target_tags"] == ["web", "db"]
            assert first["counts"] == {"SUCCESS": 3, "AGENT_UNREACHABLE": 1}
            # Re-run what did not succeed: only "other" (still offline).
            url = f"/api/batch_commands/{first['batch_command_id']}/rerun"
            again = await client.post(url, json={"only": "not_succeeded"})
            assert again.status_code == 202, again.text
            assert again.json()["rerun_of"] == first["batch_command_id"]
            second = await wait_batch(server, again.json()["batch_command_id"])
            assert [t["vps_name"] for t in second["tasks"]] == ["other"]
            assert second["rerun_of"] == first["batch_command_id"]
            assert second["parameters"] == {"N": "1", "S": "secret-value"}
            everything = await client.post(url, json={"only": "all"})
            assert everything.status_code == 202
            third = await wait_batch(server, everything.json()["batch_command_id"])
            assert len(third["tasks"]) == 4
            # A running batch cannot be re-run; one where all succeeded has nothing to re-run.
            slow = await client.post(
                "/api/batch_commands",
                json={"command_content": "sleep 30", "target_vps_ids": [web1["id"]]},
            )
            slow_id = slow.json()["batch_command_id"]
            conflict = await client.post(f"/api/batch_commands/{slow_id}/rerun")
            assert conflict.status_code == 409
            assert conflict.json()["error"] == "conflict"
            await client.post(f"/api/batch_commands/{slow_id}/terminate")
            await wait_batch(server, slow_id)
            ok = await client.post(
                "/api/batch_commands",
                json={"command_content": "true", "target_vps_ids": [web1["id"]]},
            )
            await wait_batch(server, ok.json()["batch_command_id"])
            nothing = await client.post(
                f"/api/batch_commands/{ok.json()['batch_command_id']}/rerun"
            )
            assert nothing.status_code == 422
            assert "nothing to re-run" in nothing.text
            nursery.cancel_scope.cancel()
    history = (await client.get("/api/batch_commands")).json()["items"]
    assert {h["rerun_of"] for h in history} >= {first["batch_command_id"], None}


async def test_a_rerun_asks_for_secrets_again(server: Endpoints, client: httpx.AsyncClient) -> None:
    vps = await add_vps(client, "sec")
    script = await client.post(
        "/api/scripts",
        json={"name": "sec", "content": "true", "parameters": [{"name": "T", "secret": True}]},
    )
    response = await client.post(
        "/api/batch_commands",
        json={"script_id": script.json()["id"], "target_vps_ids": [vps["id"]],
              "parameters": {"T": "s3cr3t-value"}},
    )  # fmt: skip
    batch_id = response.json()["batch_command_id"]
    with trio.fail_after(10):
        await wait_batch(server, batch_id)
    url = f"/api/batch_commands/{batch_id}/rerun"
    missing = await client.post(url, json={})
    assert missing.status_code == 422
    assert missing.json()["detail"][0]["field"] == "parameters.T"
    unknown = await client.post(url, json={"parameters": {"T": "x", "Z": "y"}})
    assert unknown.status_code == 422
    assert "parameters.Z" in unknown.text
    ok = await client.post(url, json={"parameters": {"T": "again"}})
    assert ok.status_code == 202, ok.text
    payload = (await client.get(f"/api/batch_commands/{ok.json()['batch_command_id']}")).json()
    assert payload["parameters"] == {"T": "***"}


async def test_bad_rollout_input_is_never_a_500(client: httpx.AsyncClient) -> None:
    vps = await add_vps(client, "bad")
    base: dict[str, Any] = {"command_content": "true", "target_vps_ids": [vps["id"]]}
    for extra, field in [
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"max_concurrency": "0%"}, "max_concurrency"),
        ({"max_concurrency": "101%"}, "max_concurrency"),
        ({"max_errors": "-1%"}, "max_errors"),
        ({"max_errors": "200%"}, "max_errors"),
        ({"max_errors": [1]}, "max_errors"),
        ({"wait_for_agent_seconds": -5}, "wait_for_agent_seconds"),
        ({"wait_for_agent_seconds": 10**9}, "wait_for_agent_seconds"),
        ({"target_tags": "web"}, "target_tags"),
        ({"parameters": {"1x": "v"}}, "parameters['1x']"),
        ({"parameters": {"X": "a\u0000"}}, "parameters.X"),
        ({"parameters": {"X": "é" * 2049}}, "parameters.X"),
        ({"parameters": []}, "parameters"),
    ]:
        response = await client.post("/api/batch_commands", json=base | extra)
        assert response.status_code == 422, (extra, response.text)
        assert field in {e["field"] for e in response.json()["detail"]}, (extra, response.text)
    no_tag = await client.post(
        "/api/batch_commands", json={"command_content": "true", "target_tags": ["nope"]}
    )
    assert no_tag.status_code == 422
    assert "no VPS has any of these tags" in no_tag.text
    for bad_id in ("00000000-0000-0000-0000-000000000000", "x" * 40, "%00"):
        response = await client.post(f"/api/batch_commands/{bad_id}/rerun", json={})
        assert response.status_code == 404, response.text
    created = await client.post("/api/batch_commands", json=base)
    url = f"/api/batch_commands/{created.json()['batch_command_id']}/rerun"
    for body in ({"only": "some"}, {"only": 3}, {"extra": 1}, [1]):
        response = await client.post(url, json=body)
        assert response.status_code in (409, 422), response.text
    response = await client.post(
        url, content=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400


async def test_editing_a_script_keeps_its_parameters_unless_given(
    client: httpx.AsyncClient,
) -> None:
    declared = [{"name": "V", "required": True, "pattern": "[0-9]+"}]
    created = await client.post(
        "/api/scripts", json={"name": "keep", "content": "true", "parameters": declared}
    )
    sid = created.json()["id"]
    edited = await client.put(f"/api/scripts/{sid}", json={"name": "keep", "content": "false"})
    assert edited.status_code == 200, edited.text
    assert [p["name"] for p in edited.json()["parameters"]] == ["V"]
    cleared = await client.put(
        f"/api/scripts/{sid}", json={"name": "keep", "content": "false", "parameters": []}
    )
    assert cleared.json()["parameters"] == []
    bad = await client.put(
        f"/api/scripts/{sid}",
        json={"name": "keep", "content": "x", "parameters": [{"name": "A", "pattern": "[z-a]"}]},
    )
    assert bad.status_code == 422
    assert "not a valid regular expression" in bad.text
