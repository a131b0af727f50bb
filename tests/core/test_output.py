"""StreamCursor (offsets, duplicates, gaps, the cap, resume) and OutputSummary (last lines)."""

from __future__ import annotations

import pytest

from fleet.core import Accepted, OutputSummary, StreamCursor

# --- StreamCursor -----------------------------------------------------------------------------


def test_in_order_chunks_are_appended() -> None:
    cursor = StreamCursor(cap=100)
    assert cursor.accept(b"hello ", offset=0) == Accepted(b"hello ")
    assert cursor.accept(b"world", offset=6) == Accepted(b"world")
    assert (cursor.position, cursor.stored, cursor.truncated) == (11, 11, False)


def test_exact_duplicate_is_dropped() -> None:
    cursor = StreamCursor(cap=100)
    cursor.accept(b"abcdef", offset=0)
    assert cursor.accept(b"abcdef", offset=0) == Accepted(b"")
    assert cursor.accept(b"cd", offset=2) == Accepted(b"")
    assert cursor.accept(b"", offset=6) == Accepted(b"")
    assert (cursor.position, cursor.stored) == (6, 6)


def test_overlap_keeps_only_the_new_tail() -> None:
    cursor = StreamCursor(cap=100)
    cursor.accept(b"abcdef", offset=0)
    assert cursor.accept(b"defgh", offset=3) == Accepted(b"gh")
    assert cursor.position == 8


def test_gap_is_reported_and_skipped() -> None:
    cursor = StreamCursor(cap=100)
    cursor.accept(b"abc", offset=0)
    assert cursor.accept(b"xyz", offset=10) == Accepted(b"xyz", gap=7)
    assert (cursor.position, cursor.stored) == (13, 6)
    # The missing bytes arriving late are before the position now: dropped.
    assert cursor.accept(b"defghij", offset=3) == Accepted(b"")


def test_empty_chunk_past_the_end_reports_the_gap() -> None:
    cursor = StreamCursor(cap=100)
    assert cursor.accept(b"", offset=5) == Accepted(b"", gap=5)
    assert cursor.position == 5


def test_chunks_without_offset_are_appended_in_arrival_order() -> None:
    cursor = StreamCursor(cap=100)
    assert cursor.accept(b"one ") == Accepted(b"one ")
    assert cursor.accept(b"one ") == Accepted(b"one ")  # no offset: no de-duplication
    assert cursor.position == 8
    # A later chunk with an offset is placed against the same position.
    assert cursor.accept(b"one two", offset=4) == Accepted(b"two")


def test_cap_exactly_reached_is_not_truncation() -> None:
    cursor = StreamCursor(cap=6)
    assert cursor.accept(b"abcdef", offset=0) == Accepted(b"abcdef")
    assert not cursor.truncated
    assert cursor.accept(b"g", offset=6) == Accepted(b"", truncated=True)
    assert cursor.accept(b"h", offset=7) == Accepted(b"")  # reported once
    assert (cursor.position, cursor.stored, cursor.truncated) == (8, 6, True)


def test_cap_crossed_by_one_chunk() -> None:
    cursor = StreamCursor(cap=5)
    assert cursor.accept(b"abc") == Accepted(b"abc")
    assert cursor.accept(b"defgh") == Accepted(b"de", truncated=True)
    assert cursor.accept(b"ijk") == Accepted(b"")
    assert (cursor.position, cursor.stored) == (11, 5)


def test_cap_beyond_in_the_first_chunk() -> None:
    cursor = StreamCursor(cap=2)
    assert cursor.accept(b"abcdef", offset=0) == Accepted(b"ab", truncated=True)


def test_zero_cap_keeps_nothing() -> None:
    cursor = StreamCursor(cap=0)
    assert cursor.accept(b"", offset=0) == Accepted(b"")
    assert not cursor.truncated
    assert cursor.accept(b"a") == Accepted(b"", truncated=True)


def test_duplicate_after_truncation_is_still_dropped() -> None:
    cursor = StreamCursor(cap=3)
    cursor.accept(b"abcdef", offset=0)
    assert cursor.accept(b"abcdef", offset=0) == Accepted(b"")


def test_resume_from_a_position() -> None:
    cursor = StreamCursor(cap=10, position=4)
    assert (cursor.stored, cursor.truncated) == (4, False)
    assert cursor.accept(b"abcdef", offset=0) == Accepted(b"ef")  # re-sent after a restart
    assert cursor.accept(b"ghijkl", offset=6) == Accepted(b"ghij", truncated=True)


def test_resume_past_the_cap_is_already_truncated() -> None:
    cursor = StreamCursor(cap=4, position=9)
    assert (cursor.stored, cursor.truncated) == (4, True)
    assert cursor.accept(b"more", offset=9) == Accepted(b"")  # not reported a second time


@pytest.mark.parametrize(("cap", "position"), [(-1, 0), (0, -1)])
def test_cursor_rejects_negative_numbers(cap: int, position: int) -> None:
    with pytest.raises(ValueError, match="negative"):
        StreamCursor(cap=cap, position=position)


def test_large_offsets() -> None:
    start = 2**40
    cursor = StreamCursor(cap=2**50, position=start)
    assert cursor.accept(b"x" * 8, offset=start + 2) == Accepted(b"x" * 8, gap=2)
    assert cursor.position == start + 10


# --- OutputSummary -----------------------------------------------------------------------------


def summary_of(*chunks: bytes, **kwargs: int) -> list[str]:
    summary = OutputSummary(**kwargs)
    for chunk in chunks:
        summary.feed(chunk)
    return summary.lines()


def test_empty_summary() -> None:
    assert summary_of() == []
    assert summary_of(b"") == []


def test_lines_and_the_unfinished_last_line() -> None:
    assert summary_of(b"one\ntwo\nthr", b"ee") == ["one", "two", "three"]
    assert summary_of(b"one\n") == ["one"]
    assert summary_of(b"\n\n") == ["", ""]


def test_keeps_only_the_last_lines() -> None:
    data = b"".join(b"line %d\n" % i for i in range(100))
    assert summary_of(data, max_lines=3) == ["line 97", "line 98", "line 99"]
    assert summary_of(data, b"tail", max_lines=3) == ["line 98", "line 99", "tail"]


def test_long_lines_are_cut_with_an_ellipsis() -> None:
    assert summary_of(b"abcdefgh\nok\n", max_line_bytes=4) == ["abcd…", "ok"]
    assert summary_of(b"abcd\n", max_line_bytes=4) == ["abcd"]  # exactly at the limit
    # Cut across feeds: the rest of the line is dropped until its newline.
    assert summary_of(b"ab", b"cdef", b"gh\nxy", max_line_bytes=4) == ["abcd…", "xy"]
    assert summary_of(b"abcdefgh", max_line_bytes=4) == ["abcd…"]  # unfinished, already cut


def test_crlf_line_endings() -> None:
    assert summary_of(b"one\r\ntwo\r\n") == ["one", "two"]
    assert summary_of(b"one\r", b"\ntwo\r") == ["one", "two"]
    assert summary_of(b"progress 1\rprogress 2\n") == ["progress 1\rprogress 2"]


def test_invalid_utf8_is_replaced() -> None:
    assert summary_of(b"bad \xff\xfe byte\n") == ["bad \ufffd\ufffd byte"]


def test_multibyte_character_split_across_feeds() -> None:
    snowman = "☃".encode()
    assert summary_of(b"a" + snowman[:1], snowman[1:2], snowman[2:] + b"b\n") == ["a☃b"]


def test_cut_does_not_split_a_character() -> None:
    line = "aé☃".encode()  # 1 + 2 + 3 bytes
    assert summary_of(line + b"\n", max_line_bytes=2) == ["a…"]
    assert summary_of(line + b"\n", max_line_bytes=3) == ["aé…"]
    assert summary_of(line + b"\n", max_line_bytes=5) == ["aé…"]
    assert summary_of(line + b"\n", max_line_bytes=6) == ["aé☃"]
    # The split happens inside a feed boundary too.
    assert summary_of(line[:2], line[2:] + b"\n", max_line_bytes=4) == ["aé…"]
    # Bytes that are not UTF-8 are simply cut at the limit.
    assert summary_of(b"\x80\x80\x80\x80\x80\n", max_line_bytes=2) == ["\ufffd\ufffd…"]


def test_summary_rejects_silly_bounds() -> None:
    with pytest.raises(ValueError, match="positive"):
        OutputSummary(max_lines=0)
    with pytest.raises(ValueError, match="positive"):
        OutputSummary(max_line_bytes=0)


def test_of_restores_kept_lines() -> None:
    summary = OutputSummary.of(["one", "two", "three"], max_lines=2)
    assert summary.lines() == ["two", "three"]
    summary.feed(b"four\n")
    assert summary.lines() == ["three", "four"]


def test_of_cuts_long_lines_like_feed_and_keeps_cut_ones() -> None:
    summary = OutputSummary.of(["abcdefgh", "abcd…", "aé☃", "ok"], max_line_bytes=4)
    assert summary.lines() == ["abcd…", "abcd…", "aé…", "ok"]


def test_of_round_trips_a_summary() -> None:
    original = OutputSummary(max_lines=3, max_line_bytes=5)
    original.feed("short\nmuch longer line\né☃é☃\nunfinished ☃".encode())
    restored = OutputSummary.of(original.lines(), max_lines=3, max_line_bytes=5)
    assert restored.lines() == original.lines() == ["much …", "é☃…", "unfin…"]
