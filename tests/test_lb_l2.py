"""Bare-metal LoadBalancer end to end: MetalLB's objects through the API stand-in, addresses written to
Service status by the elected allocator, and exactly one node answering ARP/NDP for each address.

The client sits on the LAN with no route but the LAN prefix: it reaches a LoadBalancer address only
because a node answers ARP (or NDP) for it, so every successful connection below proves an
announcement, and the MAC the client learned names the node that made it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from e2e.lb import LBWorld, lb_world

pytestmark = pytest.mark.kernel

SEED = "198.18.0.200"


@pytest.fixture(scope="module")
def world() -> Iterator[LBWorld]:
    with lb_world() as w:
        w.pool("seed", f"{SEED}/32")
        w.l2("l2")
        yield w


def test_seed_pool_first_served_second_pending_then_handed_over(world: LBWorld) -> None:
    world.service("first", world.pods)
    assert world.wait_ingress("first") == [SEED]
    result = world.eventually_served(SEED)
    assert result.ok, f"the client reaches {SEED} through ARP: {result}"
    assert result.pod in {p.name for p in world.pods}
    answering = world.who_answers(SEED)
    assert len(answering) == 1, f"exactly one node answers ARP for {SEED}: {answering}"
    assert answering[0] in {n.name for n in world.cluster.nodes}
    assert world.learned(SEED) == answering[0]
    assert ("Normal", "nodeAssigned", f'announcing from node "{answering[0]}" with protocol "layer2"') in \
        world.wait_event("first", "nodeAssigned")

    world.service("second", world.pods[:1])
    refused = world.wait_event("second", "AllocationFailed")
    assert refused and "no free IPv4 address in pool 'seed'" in refused[0][2], refused
    assert world.ingress("second") == []

    world.delete_service("first")
    assert world.wait_ingress("second") == [SEED], "the freed address goes to the pending Service"
    deadline = time.monotonic() + 10
    while (result := world.probe(SEED, timeout=0.5)[0]).pod != "web-1" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert result.ok and result.pod == "web-1", result
    world.delete_service("second")


def test_requested_address_outside_every_pool_is_refused(world: LBWorld) -> None:
    world.service("outsider", world.pods, annotations={"metallb.io/loadBalancerIPs": "198.18.0.250"})
    refused = world.wait_event("outsider", "AllocationFailed")
    assert refused and "outside every IPAddressPool" in refused[0][2], refused
    assert world.ingress("outsider") == []
    world.delete_service("outsider")
