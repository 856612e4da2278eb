"""Where jobs are kept: one interface (``base``), three stores.

- ``memory``: the default; nothing survives a restart;
- ``sqlite:PATH``: one daemon's durable history (``sqlite``);
- ``postgresql://...``: several daemons acting as one (``postgres``).
"""

from httprunner.store.base import (
    JobStore,
    ListQuery,
    QueueFull,
    Recovery,
    StoreCounts,
    Stored,
    StoreError,
    StoreUnavailable,
    UnknownCursor,
    UnknownNode,
)
from httprunner.store.memory import MemoryJobStore

__all__ = [
    "JobStore",
    "ListQuery",
    "MemoryJobStore",
    "QueueFull",
    "Recovery",
    "StoreCounts",
    "StoreError",
    "StoreUnavailable",
    "Stored",
    "UnknownCursor",
    "UnknownNode",
]
