"""The capped output buffer: head + tail, offsets, decoding once."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from httprunner.output import OutputBuffer


def test_under_the_cap_everything_is_kept() -> None:
    b = OutputBuffer(100)
    b.append(b"hello ")
    b.append(b"world")
    assert (b.total, b.dropped, b.text()) == (11, 0, "hello world")
    assert b.read(0) == (0, b"hello world")
    assert b.read(6) == (6, b"world")
    assert b.read(11) == (11, b"")


def test_over_the_cap_head_and_tail_are_kept_and_the_gap_marked() -> None:
    b = OutputBuffer(10)
    b.append(b"0123456789abcdefghij")
    assert (b.total, b.dropped) == (20, 10)
    assert b.text() == "01234\n[... 10 bytes dropped ...]\nfghij"
    # a read in the head stops at the gap; the next offset jumps over it
    assert b.read(0) == (0, b"01234")
    assert b.read(5) == (15, b"fghij")
    assert b.read(17) == (17, b"hij")


def test_multibyte_characters_split_across_chunks_decode_intact() -> None:
    data = "héllo wörld ✓".encode()
    b = OutputBuffer(1000)
    for i in range(len(data)):
        b.append(data[i : i + 1])
    assert b.text() == "héllo wörld ✓"


def test_invalid_bytes_become_replacement_characters() -> None:
    b = OutputBuffer(100)
    b.append(b"ok \xff\xfe")
    assert b.text() == "ok \ufffd\ufffd"


def test_compacted_buffer_reads_the_same() -> None:
    b = OutputBuffer(10)
    b.append(b"0123456789abcdefghij")
    before = (b.text(), b.read(0), b.read(12))
    b.compact()
    assert (b.text(), b.read(0), b.read(12)) == before


@given(st.integers(min_value=1, max_value=64), st.lists(st.binary(max_size=40), max_size=30))
def test_retained_bytes_are_the_streams_head_and_tail(cap: int, chunks: list[bytes]) -> None:
    b = OutputBuffer(cap)
    for chunk in chunks:
        b.append(chunk)
    stream = b"".join(chunks)
    assert b.total == len(stream)
    assert b.dropped == max(0, len(stream) - cap)
    # reading from 0 and following next offsets yields head + tail exactly
    got, offset = b"", 0
    for _ in range(3):
        start, data = b.read(offset)
        assert stream[start : start + len(data)] == data
        got += data
        offset = start + len(data)
    assert offset == len(stream)
    if b.dropped:
        assert got == stream[: cap // 2] + stream[len(stream) - (cap - cap // 2) :]
    else:
        assert got == stream
