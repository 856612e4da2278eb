"""The capped output buffer of one job stream: head + tail, byte offsets.

A job may write far more than the daemon should keep.  Each stream keeps
the first ``cap // 2`` bytes (the head: the command line echo, the first
error) and the last ``cap - cap // 2`` bytes (the tail: the progress, the
final error), and counts what fell out of the middle.  Offsets are byte
positions in the whole stream as the job wrote it, so a reader can resume
where it stopped for as long as those bytes are retained.
"""

from __future__ import annotations

GAP_MARKER = "[... {} bytes dropped ...]\n"


class OutputBuffer:
    """Retain the head and tail of a byte stream under a fixed cap."""

    # Thousands of finished jobs keep two of these: one shared ``cap``
    # instead of per-buffer halves saves four int objects per job.
    __slots__ = ("_head", "_tail", "_cap", "total")

    def __init__(self, cap: int) -> None:
        self._cap = cap
        # bytearray while the stream grows; bytes once compact() froze it
        # (or a store restored it): no more appends come then.
        self._head: bytearray | bytes = bytearray()
        self._tail: bytearray | bytes = bytearray()
        #: every byte the job wrote to this stream
        self.total = 0

    @classmethod
    def restore(cls, cap: int, head: bytes, tail: bytes, total: int) -> OutputBuffer:
        """A buffer as a store kept it (see :meth:`parts`)."""
        buffer = cls(cap)
        buffer._head = head
        buffer._tail = tail
        buffer.total = total
        return buffer

    def parts(self) -> tuple[bytes, bytes, int]:
        """``(head, tail, total)``: what a store keeps of the stream."""
        return bytes(self._head), bytes(self._tail), self.total

    @property
    def dropped(self) -> int:
        """How many bytes fell out of the middle."""
        return self.total - len(self._head) - len(self._tail)

    @property
    def over_cap(self) -> bool:
        """True once the stream has written more than the cap retains."""
        return self.dropped > 0

    @property
    def tail_start(self) -> int:
        """Stream offset of the first byte of the tail."""
        return self.total - len(self._tail)

    def append(self, data: bytes) -> None:
        self.total += len(data)
        head_cap = self._cap // 2
        room = head_cap - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
            if not data:
                return
        tail_cap = self._cap - head_cap
        if len(data) >= tail_cap:
            self._tail = bytearray(data[len(data) - tail_cap :])
            return
        self._tail += data
        excess = len(self._tail) - tail_cap
        if excess > 0:
            # Deleting from the front of a bytearray is amortised O(1) in
            # CPython: it moves a start offset instead of the data.
            assert isinstance(self._tail, bytearray), "append after compact()"
            del self._tail[:excess]

    def compact(self) -> None:
        """Freeze the buffer once the stream is finished.

        Thousands of finished jobs are retained: immutable ``bytes`` carry
        no spare capacity, and empty ones are a shared singleton.
        """
        self._head = bytes(self._head)
        self._tail = bytes(self._tail)

    def read(self, offset: int) -> tuple[int, bytes]:
        """Return ``(start, data)``: retained bytes from ``offset`` on.

        ``data`` is one contiguous run of the stream starting at ``start``.
        When ``offset`` falls in the dropped gap, ``start`` is the first
        retained byte after it.  A read that starts in the head stops at the
        gap, so ``start + len(data)`` is always the next offset to ask for.
        Past the end, ``data`` is empty and ``start`` is ``offset``.
        """
        head_len = len(self._head)
        if offset >= self.total:
            return offset, b""
        if offset < head_len:
            if self.dropped:
                return offset, bytes(self._head[offset:])
            return offset, bytes(self._head[offset:] + self._tail)
        start = max(offset, self.tail_start)
        return start, bytes(self._tail[start - self.tail_start :])

    def text(self) -> str:
        """The retained bytes decoded once, the gap marked by one line."""
        if self.dropped:
            head = self._head.decode("utf-8", "replace")
            if head and not head.endswith("\n"):
                head += "\n"
            return head + GAP_MARKER.format(self.dropped) + self._tail.decode("utf-8", "replace")
        if not self._tail:
            return self._head.decode("utf-8", "replace")
        return (self._head + self._tail).decode("utf-8", "replace")


class OutputCounts(OutputBuffer):
    """The byte counts of a stream whose bytes a store did not load (a
    listing shows counts, never output)."""

    __slots__ = ("_dropped",)

    def __init__(self, cap: int, total: int, dropped: int) -> None:
        super().__init__(cap)
        self.total = total
        self._dropped = dropped

    @property
    def dropped(self) -> int:
        return self._dropped
