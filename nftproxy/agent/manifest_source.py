"""Objects from manifest files: read once, then re-read on change and reported as upserts and deletes."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..objects.manifests import ManifestError, ObjectKey, manifest_files, object_key, read_file

log = logging.getLogger("nftproxy.manifests")


@dataclass(slots=True)
class ManifestChanges:
    upserts: list[Mapping[str, Any]] = field(default_factory=list)
    deletes: list[ObjectKey] = field(default_factory=list)


class ManifestSource:
    """Keeps the objects of every file; a file that fails to parse keeps its last good objects."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._stamps: dict[Path, tuple[int, int]] = {}
        self._per_file: dict[Path, dict[ObjectKey, Mapping[str, Any]]] = {}
        self._reported: dict[Path, str] = {}

    def poll(self, strict: bool = False) -> ManifestChanges:
        """Changes since the last poll. `strict`: raise on a broken file instead of keeping old objects."""
        before = self._merged()
        files = manifest_files(self.path)
        for gone in set(self._per_file) - set(files):
            self._per_file.pop(gone)
            self._stamps.pop(gone, None)
        for path in files:
            try:
                st = path.stat()
            except OSError:
                continue
            stamp = (st.st_mtime_ns, st.st_size)
            if self._stamps.get(path) == stamp:
                continue
            try:
                objects = read_file(path)
            except ManifestError as err:
                if strict:
                    raise
                if self._reported.get(path) != str(err):
                    self._reported[path] = str(err)
                    log.error("%s (keeping the objects last read from it)", err)
                continue
            self._reported.pop(path, None)
            self._stamps[path] = stamp
            self._per_file[path] = {object_key(o): o for o in objects}
        after = self._merged()
        changes = ManifestChanges()
        changes.upserts = [obj for key, obj in after.items() if before.get(key) != obj]
        changes.deletes = [key for key in before if key not in after]
        return changes

    def _merged(self) -> dict[ObjectKey, Mapping[str, Any]]:
        merged: dict[ObjectKey, Mapping[str, Any]] = {}
        for path in sorted(self._per_file):
            merged.update(self._per_file[path])
        return merged
