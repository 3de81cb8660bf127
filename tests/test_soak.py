"""Soak, the CI version (issue 13, 8): 3 minutes of churn at 2,000 live Services through the API stand-in
while a client keeps connecting to Services whose endpoints stay up (e2e/soak.py; the 30-minute run at
10,000 Services is `python -m e2e.soak --minutes 30 --services 10000`, figures in BENCHMARKS.md).

2,000 rather than 10,000 Services: at 10,000 the stand-in's first list, the agent's first sync and the
closing `nft -j` comparison alone take several minutes on CI's 2 cores, on top of the 3 minutes of churn.
"""

from __future__ import annotations

import pytest

from e2e.soak import compare, run_soak

pytestmark = pytest.mark.kernel


def test_compare_names_what_differs() -> None:
    """The end-of-soak check can fail: a missing, an extra and a changed element are each named."""
    want = {"service-ips-v4": {"198.19.0.1 . tcp . 80": ("4100:2", "soak/a:http"),
                               "198.19.0.2 . tcp . 80": ("4100:1", "soak/b:http")}}
    have = {"service-ips-v4": {"198.19.0.1 . tcp . 80": ("4100:3", "soak/a:http"),
                               "198.19.0.3 . tcp . 80": ("4100:1", "soak/c:http")}}
    found = compare(have, want)
    assert not found["equal"]
    assert found["diff"]["service-ips-v4"]["counts"] == [1, 1, 1]
    assert compare(want, want)["equal"]


@pytest.mark.timeout(1200)
def test_three_minutes_of_churn_at_2000_services() -> None:
    result = run_soak(minutes=3, services=2000, sync_period="60s", say=lambda text: print(text, flush=True))
    print(result.summary())
    client, rss = result.client, result.rss_mib
    assert client["failed"] == 0 and client["connections"] > 1000, client
    assert result.kernel["equal"], result.kernel["diff"]
    assert result.syncs["full rebuilds"] >= 3, "periodic rebuilds happened under the client's connections"
    assert result.syncs["failed"] == 0 and result.syncs["drift reports"] == 0, result.syncs
    assert rss["end"] <= rss["start"] * 1.15 + 10, f"RSS grew: {rss}"
    assert all(d["restored_ms"] is not None for d in result.drift), result.drift
