"""Following a batch live until it is over, as ``fleet run`` and ``fleet batches follow`` do.

Output streams to stdout as it comes; a progress line is redrawn on a terminal's stderr; at the
end the per-VPS outcome goes to stderr (or the final batch as JSON to stdout). Ctrl-C: with
``terminate``, the first press terminates the batch and the second stops watching; without, the
first stops watching.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from collections.abc import AsyncIterator, Iterator

import trio

from fleet.core import BatchStatus, ChildStatus

from .client import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, ClientError, FleetClient, batch_path
from .console import LiveOutput, Progress, isatty, print_error, print_outcome
from .watch import BatchWatch, fill_gaps, follow

__all__ = ["follow_batch", "interrupts"]

TERMINATE_TIMEOUT_S = 10  # Ctrl-C's terminate request, which even a second Ctrl-C waits for


@contextlib.contextmanager
def interrupts() -> Iterator[AsyncIterator[int] | None]:
    """SIGINT as an async iterator while the block runs (``None`` off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    with trio.open_signal_receiver(signal.SIGINT) as receiver:
        yield receiver


async def follow_batch(
    client: FleetClient,
    batch_id: str,
    args: argparse.Namespace,
    signals: AsyncIterator[int] | None,
    *,
    terminate: bool,
) -> int:
    """Stream the batch until it is final, then print its outcome; ``fleet run``'s exit code."""
    err = sys.stderr
    watch = BatchWatch(batch_id, output=not (args.json or args.no_stream))
    progress = Progress(err, enabled=isatty(err))
    live = LiveOutput(watch, sys.stdout, progress, show=watch.output)
    if await _watch(client, watch, live, progress, signals, terminate=terminate):
        progress.clear()
        going = "goes on terminating" if terminate else "goes on"
        print_error(f"stopped watching; the batch {going} (fleet batches follow {batch_id})")
        return EXIT_INTERRUPTED
    final = await client.call("GET", batch_path(batch_id))
    live(await fill_gaps(client, watch, watch.on_snapshot(final)))  # anything the feed missed
    live.flush_all()
    progress.clear()
    succeeded = final.get("overall_status") == BatchStatus.COMPLETED_SUCCESSFULLY and all(
        c.status == ChildStatus.SUCCESS for c in watch.children.values()
    )
    if args.json:
        print(json.dumps(final, indent=2), flush=True)
    else:
        print_outcome(final, watch, err)
    return EXIT_OK if succeeded else EXIT_FAILED


async def _watch(
    client: FleetClient,
    watch: BatchWatch,
    live: LiveOutput,
    progress: Progress,
    signals: AsyncIterator[int] | None,
    *,
    terminate: bool,
) -> bool:
    """Follow the batch until it is final; True when the user stopped watching.

    With ``terminate``, the first Ctrl-C terminates the batch and the second stops watching;
    without, the first stops watching.
    """
    presses = 0
    path = batch_path(watch.batch_id, "terminate")

    async def send_terminate() -> None:
        # Shielded: a second Ctrl-C right after the first must not cancel the request.
        with trio.move_on_after(TERMINATE_TIMEOUT_S, shield=True):
            try:
                await client.call("POST", path)
            except ClientError as exc:
                print_error(f"could not terminate the batch: {exc}")

    async def on_interrupt(nursery: trio.Nursery) -> None:
        nonlocal presses
        if signals is None:
            return
        async for _ in signals:
            presses += 1
            progress.clear()
            if presses > 1 or not terminate:
                nursery.cancel_scope.cancel(reason="Ctrl-C")
                return
            print_error("terminating the batch... (Ctrl-C again to stop watching)")
            nursery.start_soon(send_terminate)

    error: Exception | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(on_interrupt, nursery)
        nursery.start_soon(progress.tick, watch)
        try:
            await follow(client, watch, live)
        except Exception as exc:  # re-raised below, outside the nursery: no exception group
            error = exc
        nursery.cancel_scope.cancel(reason="the batch is over")
    if error is not None:
        raise error
    return presses > int(terminate)
