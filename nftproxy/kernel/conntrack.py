"""Delete conntrack entries with the conntrack tool (Debian package conntrack).

pyroute2's filtered conntrack dump is refused by the kernel for IPv6 here (EINVAL), so the tool,
which filters and deletes in one go, serves both families.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Iterable

from ..desired.conntrack import StaleFlows

log = logging.getLogger("nftproxy.conntrack")


def conntrack_argv(flow: StaleFlows) -> list[str]:
    argv = ["conntrack", "-D", "-f", "ipv6" if flow.family == 6 else "ipv4", "-p", "udp"]
    if flow.frontend_address is not None:
        argv += ["--orig-dst", flow.frontend_address]
    argv += ["--orig-port-dst", str(flow.port)]
    if flow.endpoint is not None:
        argv += ["--reply-src", flow.endpoint[0], "--reply-port-src", str(flow.endpoint[1])]
    return argv


class ConntrackCleaner:
    def __init__(self) -> None:
        self.available = shutil.which("conntrack") is not None
        if not self.available:
            log.warning("the conntrack tool is missing (Debian package conntrack): stale UDP flows are not cleared")

    def delete(self, flows: Iterable[StaleFlows]) -> int:
        """Delete every matching entry; returns how many commands ran. Failures are logged, never raised."""
        ran = 0
        for flow in flows:
            if not self.available:
                return ran
            argv = conntrack_argv(flow)
            try:
                proc = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            except (OSError, subprocess.TimeoutExpired) as err:
                log.warning("%s failed: %s", " ".join(argv), err)
                continue
            ran += 1
            # exit 1 with "0 flow entries have been deleted" just means there was nothing to clear
            if proc.returncode not in (0, 1):
                log.warning("%s failed: %s", " ".join(argv), proc.stderr.strip())
        return ran
