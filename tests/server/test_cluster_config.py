"""``--cluster``, ``--node-name``, ``--node-lease`` and the agent's list of servers."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.agent.config import AgentConfig
from fleet.agent.config import ConfigError as AgentConfigError
from fleet.server.cli import build_config
from fleet.server.config import ConfigError

PG = "postgres://fleet@db.example/fleet"


def test_cluster_flags_and_environment() -> None:
    config = build_config(["--db", PG, "--cluster", "--node-name", "n1:50051"], {})
    assert (config.cluster, config.node_name, config.node_lease_s) == (True, "n1:50051", 10.0)
    env = {"FLEET_DB": PG, "FLEET_CLUSTER": "yes", "FLEET_NODE_LEASE": "3"}
    config = build_config([], env)
    assert (config.cluster, config.node_lease_s) == (True, 3.0)
    assert not build_config([], {"FLEET_CLUSTER": "0"}).cluster


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--cluster"], {}, "--cluster needs --db postgres"),
        (["--cluster", "--db", "sqlite:/tmp/x.db"], {}, "--cluster needs --db postgres"),
        (["--db", PG, "--cluster", "--node-name", "a b"], {}, "--node-name"),
        (["--db", PG, "--cluster", "--node-name", "x" * 65], {}, "--node-name"),
        (["--db", PG, "--cluster", "--node-lease", "20"], {}, "--node-lease"),
        (["--db", PG, "--cluster", "--node-lease", "0.5"], {}, "--node-lease"),
        ([], {"FLEET_CLUSTER": "maybe"}, "FLEET_CLUSTER"),
    ],
)
def test_bad_cluster_settings_are_one_line(
    argv: list[str], env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config(argv, env)


def test_the_agent_takes_a_list_of_servers(tmp_path: Path) -> None:
    config = AgentConfig.for_test("a.example:50051, b.example:50052,[::1]:7")
    assert config.servers == ["a.example:50051", "b.example:50052", "[::1]:7"]
    assert (config.host, config.port) == ("a.example", 50051)
    for bad in ("a:1,", "a:1,b", ",a:1", "a:1,b:99999"):
        with pytest.raises(AgentConfigError):
            AgentConfig.for_test(bad)
