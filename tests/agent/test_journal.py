"""The agent's journal: its record format (no I/O) and its file in the state directory."""

from __future__ import annotations

import errno
import itertools
import logging
import os
import stat
from pathlib import Path

import pytest

from fleet.agent import statedir
from fleet.agent.journal import (
    COMPACT_SLACK_BYTES,
    DONE_IDS_KEPT,
    HEADER,
    JournalState,
    ProcessInfo,
    StoredResult,
    decode,
    encode,
    replay,
)
from fleet.agent.statedir import Journal, JournalError
from fleet.proto import agent_service as pb

FAILED = int(pb.CommandStatus.FAILURE)
OK = int(pb.CommandStatus.SUCCESS)
PROC = ProcessInfo(pid=4242, start_ticks=123456, boot_id="b00t")
RESULT = StoredResult(FAILED, 3, "exit 3 ☃")


def lines(*records: dict[str, object]) -> bytes:
    return b"".join(encode(r) for r in (HEADER, *records))


# --- the format (sans-I/O) ------------------------------------------------------------------------


def test_a_record_round_trips_and_any_flipped_byte_is_caught() -> None:
    record = {"t": "r", "id": "c-1 \n ☃", "status": 3, "exit": -9, "error": 'a "b"\n'}
    line = encode(record)
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert decode(line) == record
    for index in range(len(line) - 1):
        damaged = bytearray(line)
        damaged[index] ^= 0x01
        with pytest.raises(ValueError):
            decode(bytes(damaged))


def test_replay_follows_a_command_from_accepted_to_forgotten() -> None:
    data = lines(
        {"t": "a", "id": "c"},
        {"t": "p", "id": "c", "pid": 4242, "start": 123456, "boot": "b00t"},
        {"t": "a", "id": "d"},
        {"t": "r", "id": "d", "status": FAILED, "exit": 3, "error": "exit 3 ☃"},
        {"t": "a", "id": "e"},
        {"t": "r", "id": "e", "status": OK, "exit": 0, "error": ""},
        {"t": "k", "id": "e"},
    )
    outcome = replay(data)
    assert not outcome.torn
    assert outcome.bad_lines == 0
    state = outcome.state
    assert state.complete
    assert set(state.open) == {"c", "d"}
    assert state.open["c"].process == PROC
    assert state.open["c"].result is None
    assert state.open["d"].result == RESULT
    assert list(state.done) == ["e"]


@pytest.mark.parametrize("cut", [1, 5, 9, 20])
def test_a_torn_last_record_is_ignored(cut: int) -> None:
    whole = lines({"t": "a", "id": "c"})
    last = encode({"t": "r", "id": "c", "status": OK, "exit": 0, "error": ""})
    outcome = replay(whole + last[:cut])
    assert outcome.torn
    assert outcome.bad_lines == 0
    assert outcome.state.complete
    assert outcome.state.open["c"].result is None  # the torn result never happened


def test_a_bad_record_before_the_last_makes_the_file_corrupt_but_the_rest_is_kept() -> None:
    good = encode({"t": "a", "id": "c"})
    bad = bytearray(encode({"t": "a", "id": "lost"}))
    bad[12] ^= 0x20
    data = lines() + bytes(bad) + good + encode({"t": "a", "id": "d"})
    outcome = replay(data)
    assert outcome.bad_lines == 1
    assert not outcome.state.complete
    assert set(outcome.state.open) == {"c", "d"}


def test_unknown_record_types_and_versions_are_bad_records() -> None:
    assert replay(lines({"t": "zz", "id": "c"}, {"t": "a", "id": "d"})).bad_lines == 1
    newer = encode({"t": HEADER["t"], "v": 99}) + encode({"t": "a", "id": "c"})
    assert replay(newer).bad_lines == 1
    no_header = encode({"t": "a", "id": "c"}) + encode({"t": "a", "id": "d"})
    assert replay(no_header).bad_lines == 1


def test_forgotten_ids_are_bounded_and_a_snapshot_rebuilds_the_same_state() -> None:
    state = JournalState()
    for i in range(DONE_IDS_KEPT + 10):
        state.apply({"t": "a", "id": f"old-{i}"})
        state.apply({"t": "k", "id": f"old-{i}"})
    state.apply({"t": "a", "id": "c"})
    state.apply({"t": "p", "id": "c", "pid": 1, "start": 2, "boot": "x"})
    state.apply({"t": "a", "id": "d"})
    state.apply({"t": "r", "id": "d", "status": FAILED, "exit": 3, "error": "exit 3 ☃"})
    assert len(state.done) == DONE_IDS_KEPT
    assert "old-0" not in state.done
    assert f"old-{DONE_IDS_KEPT + 9}" in state.done
    rebuilt = replay(b"".join(encode(r) for r in state.snapshot())).state
    assert rebuilt.open == state.open
    assert list(rebuilt.done) == list(state.done)


def test_a_stored_result_converts_to_the_wire_result() -> None:
    wire = RESULT.to_result("c")
    assert wire == pb.BatchCommandResult(
        command_id="c", status=pb.CommandStatus.FAILURE, exit_code=3, error_message="exit 3 ☃"
    )
    assert StoredResult.of(wire) == RESULT
    assert StoredResult(999, 0, "").to_result("c").status == pb.CommandStatus.FAILURE


# --- the file in the state directory --------------------------------------------------------------


def test_directory_and_files_are_private_from_creation(tmp_path: Path) -> None:
    old = os.umask(0)  # even with a permissive umask
    try:
        journal = Journal(tmp_path / "state")
        journal.open()
        journal.accept("c")
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(os.stat(tmp_path / "state").st_mode) == 0o700
        for name in ("journal", "lock"):
            assert stat.S_IMODE(os.stat(tmp_path / "state" / name).st_mode) == 0o600
        assert (tmp_path / "state" / "lock").read_text().strip() == str(os.getpid())
    finally:
        journal.close()


def test_a_state_directory_others_can_reach_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    with pytest.raises(JournalError, match="chmod 700"):
        Journal(state).open()
    missing_parent = tmp_path / "no" / "such" / "state"
    with pytest.raises(JournalError, match="cannot create the state directory"):
        Journal(missing_parent).open()
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(JournalError, match="not a directory"):
        Journal(a_file).open()


def test_a_second_journal_on_the_same_directory_is_refused(tmp_path: Path) -> None:
    first = Journal(tmp_path / "state")
    first.open()
    try:
        with pytest.raises(JournalError, match=f"another fleet-agent \\(pid {os.getpid()}\\)"):
            Journal(tmp_path / "state").open()
    finally:
        first.close()
    second = Journal(tmp_path / "state")  # released on close
    second.open()
    second.close()


def test_the_journal_survives_reopening_and_forgets_what_was_acknowledged(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    journal.accept("c")
    journal.started("c", PROC)
    journal.accept("d")
    journal.finish("d", RESULT)
    journal.accept("e")
    journal.finish("e", RESULT)
    journal.acknowledge("e")
    journal.close()  # as if the agent died here: nothing else is written

    again = Journal(tmp_path)
    state = again.open()
    try:
        assert set(state.open) == {"c", "d"}
        assert state.open["c"].process == PROC
        assert state.open["d"].result == RESULT
        assert again.ran("e")
        assert again.ran("c")
        assert not again.ran("f")
        assert again.complete
        assert again.set_aside is None
    finally:
        again.close()


def test_a_torn_tail_is_dropped_when_the_journal_is_opened(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    journal.accept("c")
    journal.close()
    with open(tmp_path / "journal", "ab") as file:
        file.write(encode({"t": "r", "id": "c", "status": OK, "exit": 0, "error": ""})[:-7])
    again = Journal(tmp_path)
    state = again.open()
    again.close()
    assert again.torn
    assert again.complete
    assert again.set_aside is None
    assert state.open["c"].result is None
    assert replay((tmp_path / "journal").read_bytes()).torn is False  # rewritten whole


def test_a_corrupt_journal_is_set_aside_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "journal").write_bytes(b"\x00garbage\xff\n" + encode({"t": "a", "id": "c"}))
    os.chmod(tmp_path / "journal", 0o600)
    caplog.set_level(logging.INFO, logger="fleet.agent")
    journal = Journal(tmp_path)
    state = journal.open()
    journal.close()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "corrupt" in warnings[0].getMessage()
    assert journal.set_aside is not None
    assert journal.set_aside.read_bytes().startswith(b"\x00")
    assert set(state.open) == {"c"}  # what still read correctly is kept
    assert not journal.complete  # but the agent can no longer vouch for the whole list
    assert replay((tmp_path / "journal").read_bytes()).bad_lines == 0


def test_compaction_keeps_the_file_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(statedir.os, "fsync", lambda fd: None)  # bounds, not durability, here
    journal = Journal(tmp_path, max_results=50)
    journal.open()
    try:
        sizes = []
        for i in range(1500):
            journal.accept(f"command-{i:06d}")
            journal.started(f"command-{i:06d}", PROC)
            journal.finish(f"command-{i:06d}", RESULT)
            if i % 3:
                journal.acknowledge(f"command-{i:06d}")
            sizes.append(journal.size())
        state = journal.state
        # Every third result is never acknowledged: at most 50 results are kept.
        assert 45 <= len([e for e in state.open.values() if e.result is not None]) <= 50
        assert any(after < before for before, after in itertools.pairwise(sizes))
        snapshot = sum(len(encode(r)) for r in state.snapshot())
        assert max(sizes) <= 2 * snapshot + COMPACT_SLACK_BYTES + 1024
        assert os.path.getsize(tmp_path / "journal") == journal.size()
    finally:
        journal.close()
    reopened = Journal(tmp_path, max_results=50)
    assert reopened.open().open == state.open
    reopened.close()


def test_a_failed_write_is_repaired_by_the_next_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = Journal(tmp_path)
    journal.open()
    real_write = os.write
    calls = {"n": 0}

    def failing_write(fd: int, data: bytes) -> int:
        if fd == journal._fd and calls["n"] == 0:
            calls["n"] += 1
            real_write(fd, bytes(data)[:5])  # a partial record, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(statedir.os, "write", failing_write)
    with pytest.raises(OSError):
        journal.accept("c")
    journal.accept("d")  # space is back: the file is rewritten from the state
    monkeypatch.undo()
    journal.close()
    outcome = replay((tmp_path / "journal").read_bytes())
    assert outcome.bad_lines == 0
    assert not outcome.torn
    assert set(outcome.state.open) == {"c", "d"}


def test_a_memory_only_journal_writes_nothing_and_cannot_vouch(tmp_path: Path) -> None:
    journal = Journal(None)
    journal.open()
    journal.accept("c")
    journal.finish("c", RESULT)
    journal.acknowledge("c")
    assert journal.ran("c")
    assert not journal.complete
    assert not journal.durable
    journal.close()
