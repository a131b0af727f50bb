"""``compare``: Fleet side by side with SSH fan-out to loopback and with the local floor.

- SSH: Debian's OpenSSH server (installed with ``apt-get install -y openssh-server`` when
  missing and possible; otherwise the SSH figures are skipped with the reason) runs as
  ``sshd -D`` on a free high port with a temporary config, host key and authorized key; the
  asyncssh client (``bench.ssh_client``) opens N connections to 127.0.0.1 as if to N hosts and
  runs ``echo hi`` on each (N = 10, 100), and streams 200 MB of ``head -c`` output over one
  connection. sshd is stopped and its directory removed afterwards.
- Local floor: ``seq N | xargs -P N -I{} sh -c 'echo hi'`` (and ``sh -c true`` for 1,000),
  and a local pipe: ``head -c 200000000 /dev/zero`` read by Python in 64 KiB reads.
- Fleet: the ``fanout`` and ``throughput`` figures of the same ``python -m bench`` run when
  they were measured, else measured here.
"""

from __future__ import annotations

import getpass
import json
import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import trio

from . import fanout, throughput
from ._processes import PY, ROOT, child_env, spawn, stop_process, temp_dir
from ._report import BenchError, fmt, log, median, table

SIZE = 200_000_000
SSH_N = (10, 100)


# --- the local floor ---------------------------------------------------------------------------


def _xargs(n: int, command: str) -> float:
    start = time.perf_counter()
    done = subprocess.run(
        ["xargs", "-P", str(n), "-I{}", "sh", "-c", command],
        input="\n".join(map(str, range(n))) + "\n",
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0 or (command == "echo hi" and done.stdout.count("hi\n") != n):
        raise BenchError(f"xargs floor failed: {done.stderr[:200]}")
    return elapsed


async def _pipe_trio(size: int) -> float:
    """The agent's way: trio reads the command's stdout pipe, up to 64 KiB at a time."""
    start = time.perf_counter()
    process = await trio.lowlevel.open_process(
        ["head", "-c", str(size), "/dev/zero"], stdout=subprocess.PIPE
    )
    assert process.stdout is not None
    seen = 0
    try:
        while chunk := await process.stdout.receive_some(65536):
            seen += len(chunk)
        await process.wait()
    finally:
        await process.stdout.aclose()
    elapsed = time.perf_counter() - start
    if seen != size:
        raise BenchError(f"pipe read {seen} bytes")
    return elapsed


def _pipe(size: int) -> float:
    start = time.perf_counter()
    process = subprocess.Popen(["head", "-c", str(size), "/dev/zero"], stdout=subprocess.PIPE)
    assert process.stdout is not None
    fd = process.stdout.fileno()
    seen = 0
    while chunk := os.read(fd, 65536):
        seen += len(chunk)
    process.wait()
    elapsed = time.perf_counter() - start
    process.stdout.close()
    if seen != size:
        raise BenchError(f"pipe read {seen} bytes")
    return elapsed


# --- sshd ----------------------------------------------------------------------------------------


def _find_sshd() -> str | None:
    for candidate in (shutil.which("sshd"), "/usr/sbin/sshd"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def _install_sshd() -> str | None:
    """Debian's openssh-server, when we are root with apt-get; else None."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None
    log("compare: installing openssh-server (apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "openssh-server"],
            env=env,
            capture_output=True,
            timeout=600,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return _find_sshd()


BENCH_USER = "fleetbench"


def _make_user(home: Path) -> str | None:
    """A temporary system user whose login shell is /bin/sh (removed by ``_remove_user``).

    sshd runs every command through the login shell, and this machine's root has a ``.bashrc``
    (pyenv init) that costs ~0.1 CPU-second per session: the SSH peers would pay for that,
    not for SSH. Fleet's agent runs commands with /bin/sh, so the fair peer logs in with it.
    """
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        return None
    subprocess.run(["userdel", BENCH_USER], capture_output=True)  # a crashed run's leftover
    done = subprocess.run(
        [
            "useradd",
            "--system",
            "--no-create-home",
            "--home-dir",
            str(home),
            "--shell",
            "/bin/sh",
            "--user-group",
            "--password",
            "*",
            BENCH_USER,
        ],
        capture_output=True,
    )
    if done.returncode != 0:
        log(f"compare: cannot create user {BENCH_USER}: {done.stderr.decode().strip()}")
        return None
    home.mkdir(exist_ok=True)
    shutil.chown(home, BENCH_USER, BENCH_USER)
    return BENCH_USER


def _remove_user() -> None:
    subprocess.run(["userdel", BENCH_USER], capture_output=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sshd_files(tmp: Path, port: int) -> tuple[Path, Path]:
    for name in ("host_ed25519", "client_ed25519"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / name)],
            check=True,
            capture_output=True,
        )
    authorized = tmp / "authorized_keys"
    authorized.write_text((tmp / "client_ed25519.pub").read_text())
    authorized.chmod(0o644)  # sshd reads it as the logging-in user
    tmp.chmod(0o755)
    config = tmp / "sshd_config"
    config.write_text(
        f"""Port {port}
ListenAddress 127.0.0.1
HostKey {tmp / "host_ed25519"}
PidFile {tmp / "sshd.pid"}
AuthorizedKeysFile {authorized}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
Compression no
MaxStartups 1000:30:2000
MaxSessions 1000
LogLevel ERROR
"""
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    return config, tmp / "client_ed25519"


async def _wait_banner(port: int, process: trio.Process, timeout: float = 15) -> None:
    with trio.move_on_after(timeout):
        while process.poll() is None:
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.05)
                continue
            async with stream:
                if (await stream.receive_some(64)).startswith(b"SSH-"):
                    return
    raise BenchError("sshd did not answer")


async def _ssh_client(*args: str) -> dict[str, Any]:
    done = await trio.run_process(
        [PY, "-m", "bench.ssh_client", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=child_env(),
        cwd=ROOT,
    )
    if done.returncode != 0:
        raise BenchError(f"asyncssh client failed: {done.stderr.decode()[-500:]}")
    return json.loads(done.stdout)  # type: ignore[no-any-return]


async def _ssh_figures(runs: int, stream_runs: int) -> dict[str, Any]:
    """asyncssh figures per login (the fair /bin/sh user first, then the current user)."""
    sshd = _find_sshd() or await trio.to_thread.run_sync(_install_sshd)
    if sshd is None:
        return {
            "skipped": "sshd is not installed and could not be installed (needs root + apt-get)"
        }
    try:
        import asyncssh  # noqa: F401
    except ImportError:
        return {"skipped": "asyncssh is not installed (pip install asyncssh)"}
    async with temp_dir("fleet-bench-sshd-") as tmp:
        port = _free_port()
        config, key = _sshd_files(tmp, port)
        process = await spawn([sshd, "-D", "-e", "-f", str(config)], tmp / "sshd.log")
        created = []
        try:
            try:
                await _wait_banner(port, process)
            except BenchError:
                return {"skipped": f"sshd did not start: {(tmp / 'sshd.log').read_text()[-300:]}"}
            created: list[str] = []
            current = getpass.getuser()
            shell = Path(pwd.getpwnam(current).pw_shell).name
            logins = [(f"{current} (login shell {shell} + its rc files)", current)]
            user = await trio.to_thread.run_sync(_make_user, tmp / "home")
            if user is not None:
                created.append(user)
                logins.insert(0, (f"{user} (temporary user, login shell sh)", user))
            out: dict[str, Any] = {"sshd": sshd, "logins": {}, "echo hi": {}}
            for label, login in logins:
                figures_by_n: dict[str, Any] = {}
                for n in SSH_N:
                    log(f"compare: asyncssh echo hi on {n} loopback connections as {login}")
                    figures = await _ssh_client(
                        "fanout",
                        "--port",
                        str(port),
                        "--key",
                        str(key),
                        "--user",
                        login,
                        "--n",
                        str(n),
                        "--command",
                        "echo hi",
                        "--runs",
                        str(runs),
                    )
                    figures_by_n[str(n)] = {
                        "median_s": median(figures["seconds"]),
                        "runs": figures["seconds"],
                    }
                out["logins"][label] = figures_by_n
            for n in SSH_N:  # the best SSH figure is the one the targets compare against
                out["echo hi"][str(n)] = min(
                    by_n[str(n)]["median_s"] for by_n in out["logins"].values()
                )
            log(f"compare: asyncssh 200 MB stream as {logins[0][1]}")
            figures = await _ssh_client(
                "stream",
                "--port",
                str(port),
                "--key",
                str(key),
                "--user",
                logins[0][1],
                "--size",
                str(SIZE),
                "--runs",
                str(stream_runs),
            )
            seconds = median(figures["seconds"])
            out["stream"] = {
                "seconds": seconds,
                "mb_per_s": SIZE / 1e6 / seconds,
                "runs": figures["seconds"],
                "login": logins[0][0],
            }
            return out
        finally:
            with trio.CancelScope(shield=True):
                await stop_process(process, grace=5)
                if created:
                    await trio.to_thread.run_sync(_remove_user)


# --- the benchmark -----------------------------------------------------------------------------


async def run(
    quick: bool = False, runs: int | None = None, previous: dict[str, Any] | None = None
) -> dict[str, Any]:
    runs = runs or (3 if quick else 5)
    previous = previous or {}
    floor: dict[str, dict[str, float]] = {"echo hi": {}, "true": {}}
    floor_runs: dict[str, list[float]] = {}
    jobs = [("echo hi", n) for n in SSH_N] + [("true", 1000)]
    for command, n in jobs:
        times = [await trio.to_thread.run_sync(_xargs, n, command) for _ in range(runs)]
        floor[command][str(n)] = median(times)
        floor_runs[f"{command} {n}"] = times
    pipe_times = [await trio.to_thread.run_sync(_pipe, SIZE) for _ in range(runs)]
    pipe_mbs = SIZE / 1e6 / median(pipe_times)
    pipe_trio_mbs = SIZE / 1e6 / median([await _pipe_trio(SIZE) for _ in range(runs)])
    log(f"compare: local floor {floor}, pipe {pipe_mbs:.0f} MB/s (trio {pipe_trio_mbs:.0f})")

    ssh = await _ssh_figures(runs, max(3, runs // 2 + 1))

    # Fleet's figures: from this run's fanout/throughput when they were measured.
    sizes = {s["n"]: s for s in previous.get("fanout", {}).get("sizes", [])}
    fleet_sizes = []
    for n, commands in ((10, ("echo hi",)), (100, ("echo hi",)), (1000, ("true",))):
        if n in sizes and all(c in sizes[n]["commands"] for c in commands):
            fleet_sizes.append(sizes[n])
        elif n < 1000 or not quick:
            log(f"compare: measuring Fleet at N={n}")
            fleet_sizes.append(await fanout.measure(n, runs, commands=commands))
    fleet_mbs = previous.get("throughput", {}).get("mb_per_s")
    if fleet_mbs is None:
        log("compare: measuring Fleet's 200 MB stream")
        fleet_mbs = (await throughput.run(quick=quick, runs=None if not quick else 2))["mb_per_s"]
    return {
        "benchmark": "compare",
        "runs_per_figure": runs,
        "floor": floor,
        "floor_runs": floor_runs,
        "pipe_mb_per_s": pipe_mbs,
        "pipe_trio_mb_per_s": pipe_trio_mbs,
        "asyncssh": ssh if "skipped" not in ssh else {},
        "ssh_skipped": ssh.get("skipped"),
        "fleet_sizes": [
            {
                "n": s["n"],
                "commands": {c: {"final_s": v["final_s"]} for c, v in s["commands"].items()},
            }
            for s in fleet_sizes
        ],
        "fleet_mb_per_s": fleet_mbs,
    }


def render(result: dict[str, Any]) -> str:
    fleet = {
        (s["n"], c): v["final_s"] for s in result["fleet_sizes"] for c, v in s["commands"].items()
    }
    ssh = result["asyncssh"]
    rows = []
    for command, n in (("echo hi", 10), ("echo hi", 100), ("true", 1000)):
        f = fleet.get((n, command))
        fl = result["floor"][command].get(str(n))
        s = ssh.get("echo hi", {}).get(str(n)) if command == "echo hi" else None
        rows.append(
            [
                f"N={n} {command} (s)",
                fmt(f),
                fmt(s),
                fmt(fl),
                f"{f / fl:.2f}×" if f and fl else "-",
                f"{s / f:.1f}× faster" if f and s else "-",
            ]
        )
    fm, sm = result["fleet_mb_per_s"], ssh.get("stream", {}).get("mb_per_s")
    pm, pt = result["pipe_mb_per_s"], result.get("pipe_trio_mb_per_s")
    rows.append(
        [
            "200 MB stream (MB/s)",
            fmt(fm, "", 1),
            fmt(sm, "", 1),
            f"{fmt(pm, '', 0)} raw / {fmt(pt, '', 0)} trio",
            f"{fm / pm:.3f}× / {fm / pt:.2f}×" if fm and pm and pt else "-",
            f"{fm / sm:.2f}× asyncssh" if fm and sm else "-",
        ]
    )
    lines = [
        f"compare (Fleet vs asyncssh → OpenSSH on loopback vs local xargs -P; medians of "
        f"{result['runs_per_figure']} runs)",
        table(["what", "Fleet", "asyncssh", "local floor", "Fleet / floor", "Fleet vs SSH"], rows),
    ]
    for label, by_n in ssh.get("logins", {}).items():
        per_n = ", ".join(f"N={n}: {v['median_s']:.3f} s" for n, v in by_n.items())
        lines.append(f"asyncssh as {label}: {per_n}")
    if result.get("ssh_skipped"):
        lines.append(f"SSH skipped: {result['ssh_skipped']}")
    return "\n".join(lines)
