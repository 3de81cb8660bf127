"""What sources (API watchers, manifest files) tell the sync loop, through one queue."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Upsert:
    obj: Mapping[str, Any]  # carries "kind"


@dataclass(frozen=True, slots=True)
class Delete:
    kind: str
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class SourceState:
    """A source's connection state; `listed` turns true once its first full list is in the queue."""

    source: str
    listed: bool
    connected: bool
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Resync:
    """Rebuild the table at the next sync: someone else changed it (agent/drift.py)."""

    reason: str


Update = Upsert | Delete | SourceState | Resync
