"""Time the store alone on a big batch: create it, update every child once, read it back.

    python bench/store_create_batch.py [--targets 10000] [--rounds 3] [--postgres DSN]

SQLite runs in a temporary directory. PostgreSQL runs when a DSN is given (or
``FLEET_TEST_POSTGRES_DSN`` is set), in a throwaway schema dropped afterwards.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from urllib.parse import quote

from fleet.core._status import BatchStatus, ChildStatus
from fleet.server.store import BatchUpdate, ChildUpdate, Store


@contextmanager
def postgres_schema(dsn: str) -> Iterator[str]:
    import psycopg2  # type: ignore[import-untyped,unused-ignore]

    schema = f"fleet_bench_{uuid.uuid4().hex}"
    admin = psycopg2.connect(dsn)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE SCHEMA "{schema}"')
        separator = "&" if "?" in dsn else "?"
        yield f"{dsn}{separator}options={quote(f'-csearch_path={schema}')}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.close()


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench(label: str, url: str | None, targets: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        store = Store.open(url, data_dir)
        create, update, read = [], [], []
        try:
            for _ in range(rounds):
                batch_id, now = str(uuid.uuid4()), datetime.now(UTC)
                children = [(str(uuid.uuid4()), i, f"vps-{i:05d}") for i in range(targets)]
                create.append(
                    timed(
                        partial(
                            store.create_batch,
                            batch_id=batch_id,
                            payload={
                                "command_content": "uptime",
                                "target_vps_ids": list(range(targets)),
                            },
                            execution_alias=None,
                            user_id="bench",
                            command_type="ADHOC_COMMAND",
                            command_content="uptime",
                            script_id=None,
                            working_directory=None,
                            timeout_seconds=60,
                            targets=children,
                            log_dir=data_dir / "logs",
                            now=now,
                        )
                    )
                )
                updates = [
                    ChildUpdate(
                        child_id,
                        status=ChildStatus.SUCCESS,
                        exit_code=0,
                        stdout_summary=["up 3 days"],
                        stdout_bytes=11,
                        agent_completed_at=now,
                        updated_at=now,
                    )
                    for child_id, _, _ in children
                ]
                done = BatchUpdate(batch_id, status=BatchStatus.COMPLETED_SUCCESSFULLY)
                update.append(timed(partial(store.apply_updates, [done], updates)))
                read.append(timed(partial(store.get_batch, batch_id)))
        finally:
            store.close()
    for name, times in (("create_batch", create), ("apply_updates", update), ("get_batch", read)):
        print(
            f"{label:10} {name:14} {targets} targets: "
            f"median {statistics.median(times):.3f} s, best {min(times):.3f} s ({rounds} rounds)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--postgres", default=os.environ.get("FLEET_TEST_POSTGRES_DSN"))
    args = parser.parse_args()
    bench("sqlite", None, args.targets, args.rounds)
    if args.postgres:
        with postgres_schema(args.postgres) as url:
            bench("postgres", url, args.targets, args.rounds)
    else:
        print("postgres   skipped (no --postgres DSN and FLEET_TEST_POSTGRES_DSN is unset)")


if __name__ == "__main__":
    main()
