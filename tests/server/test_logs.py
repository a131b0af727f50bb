"""LogSink: byte-exact appends, de-duplication by offset, the cap, and a failing disk."""

from __future__ import annotations

from pathlib import Path

from fleet.server.logs import LogSink


def test_appends_dedups_and_resumes(tmp_path: Path) -> None:
    path = tmp_path / "b" / "c.stdout"
    sink = LogSink(path, cap=100, summary_lines=5)
    first = sink.write(b"h\xc3", 0)
    assert first is not None
    assert sink.text(first) == "h"  # the split character waits for its second byte
    second = sink.write(b"\xc3\xa9llo\n", 1)  # overlaps one byte already seen
    assert second is not None
    assert (second.offset, second.data) == (2, b"\xa9llo\n")
    assert sink.text(second) == "éllo\n"
    assert sink.write(b"h\xc3", 0) is None  # a duplicate after a reconnect
    sink.close()
    assert path.read_bytes() == "héllo\n".encode()
    again = LogSink(path, cap=100, summary_lines=5, summary=sink.summary.lines())
    assert again.size == 7
    assert again.summary.lines() == ["héllo"]


def test_cap_and_a_failing_disk(tmp_path: Path) -> None:
    sink = LogSink(tmp_path / "x.stdout", cap=4, summary_lines=5)
    written = sink.write(b"abcdef", 0)
    assert written is not None
    assert written.truncated
    assert "not kept" in sink.text(written)
    assert (tmp_path / "x.stdout").read_bytes() == b"abcd"
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    broken = LogSink(blocked / "c.stdout", cap=100, summary_lines=5)
    assert broken.write(b"data\n", 0) is not None  # no exception: the server keeps serving
    assert broken.error is not None
    assert "could not be written" in broken.error
    assert broken.summary.lines() == ["data"]
