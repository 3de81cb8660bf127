"""Manifest files as a source for the sync loop: polled on a thread, changes put on the queue."""

from __future__ import annotations

import logging
import queue
import threading

from ..objects.manifests import ManifestError
from .manifest_source import ManifestSource
from .updates import Delete, SourceState, Update, Upsert

log = logging.getLogger("nftproxy.manifests")


class ManifestWatcher:
    def __init__(self, source: ManifestSource, updates: queue.Queue[Update], stop: threading.Event,
                 interval: float = 1.0) -> None:
        self.source = source
        self.updates = updates
        self.stop = stop
        self.interval = interval
        self._thread = threading.Thread(target=self.run, name="manifests", daemon=True)

    def start(self) -> ManifestWatcher:
        self._thread.start()
        return self

    def alive(self) -> bool:
        return self._thread.is_alive()

    def run(self) -> None:
        listed = False
        while not self.stop.is_set():
            try:
                changes = self.source.poll()
            except ManifestError as err:
                log.error("%s", err)
            except Exception:  # noqa: BLE001 - a bug must not end file watching for good, silently
                log.exception("reading manifests failed unexpectedly: keeping the objects last read")
            else:
                for obj in changes.upserts:
                    self.updates.put(Upsert(obj))
                for kind, namespace, name in changes.deletes:
                    self.updates.put(Delete(kind, namespace, name))
                if not listed:
                    listed = True
                    self.updates.put(SourceState("manifests", listed=True, connected=True))
            self.stop.wait(self.interval)
