"""asyncssh side of ``bench compare`` (its own process: asyncssh wants a plain asyncio loop).

    python -m bench.ssh_client fanout --port P --key KEY --n N --command CMD --runs R
    python -m bench.ssh_client stream --port P --key KEY --size BYTES --runs R

``fanout``: N concurrent connections to 127.0.0.1:P as if to N hosts, each running CMD and
closing; one figure per run = the wall time from the first connect to the last close.
``stream``: one connection; per run, the time from starting ``head -c BYTES /dev/zero`` to its
exit with all stdout read in 64 KiB reads. Prints one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import asyncssh

USER = "root"


def _options(key: str) -> dict[str, Any]:
    # No compression: Fleet sends bytes as they are, and zeros would flatter a compressing
    # SSH link (sshd offers zlib@openssh.com by default).
    return {
        "known_hosts": None,
        "client_keys": [key],
        "username": USER,
        "config": [],
        "compression_algs": ["none"],
    }


async def _one(port: int, key: str, command: str) -> str:
    async with asyncssh.connect("127.0.0.1", port, **_options(key)) as conn:
        result = await conn.run(command, check=True)
        return str(result.stdout)


async def fanout(port: int, key: str, n: int, command: str, runs: int) -> dict[str, Any]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        outputs = await asyncio.gather(*(_one(port, key, command) for _ in range(n)))
        times.append(time.perf_counter() - start)
        expected = "hi\n" if command == "echo hi" else ""
        bad = sum(1 for o in outputs if o != expected)
        if bad:
            raise SystemExit(f"{bad} of {n} outputs differ from {expected!r}")
        await asyncio.sleep(0.3)
    return {"seconds": times}


async def stream(port: int, key: str, size: int, runs: int) -> dict[str, Any]:
    times = []
    async with asyncssh.connect("127.0.0.1", port, **_options(key)) as conn:
        for _ in range(runs):
            start = time.perf_counter()
            seen = 0
            async with conn.create_process(f"head -c {size} /dev/zero", encoding=None) as process:
                while chunk := await process.stdout.read(65536):
                    seen += len(chunk)
                await process.wait()
            times.append(time.perf_counter() - start)
            if seen != size:
                raise SystemExit(f"read {seen} bytes, expected {size}")
    return {"seconds": times, "bytes": size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["fanout", "stream"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--user", default="root")
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--command", default="echo hi")
    parser.add_argument("--size", type=int, default=200_000_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    global USER
    USER = args.user
    if args.mode == "fanout":
        result = asyncio.run(fanout(args.port, args.key, args.n, args.command, args.runs))
    else:
        result = asyncio.run(stream(args.port, args.key, args.size, args.runs))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
