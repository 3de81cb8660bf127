"""One bare network namespace for a test (a container's "host network", a cleanup run), tagged like the
cluster's namespaces so that a concurrent session's cleanup_stale() leaves it alone while we live and
removes it if we crash."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager

from e2e.netns.cluster import DEFAULT_PREFIX, _delete_netns, _ip_batch, _owner_tag, _run


@contextmanager
def scratch_netns(label: str) -> Iterator[str]:
    """`nfp-<label>-<random>` with lo up; deleted (with whatever runs in it) on exit."""
    name = f"{DEFAULT_PREFIX}{label}-{secrets.token_hex(3)}"
    _run(["ip", "netns", "add", name])
    try:
        _ip_batch(name, [f"link set dev lo alias {_owner_tag()}", "link set dev lo up"])
        yield name
    finally:
        _delete_netns(name)
