"""BGP mode, measured on the namespace cluster of `e2e.bgp` (3 nodes, a BIRD router, a client behind it):

- failover: a node dies (its cable pulled, then its agent SIGKILLed) while the client opens a new TCP
  connection every 20 ms: seconds until the router's kernel no longer forwards to it, and the share of
  connections that failed meanwhile (those the router still hashed to the dead node);
- re-advertisement: the node comes back (cable, agent started): seconds from the agent's start until
  the router forwards to it again;
- rollout: an agent is stopped (SIGTERM) and started again: whether the router ever stopped forwarding
  to that node (graceful restart), and failed connections;
- withdrawal: an eTP Local Service's last local endpoint turns not ready / a Service is deleted:
  milliseconds until the router's kernel lost the route.

    python -m e2e.bgp_failover --trials 10 [--output FILE]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from types import SimpleNamespace
from typing import Any

from e2e.bgp import HOLD, BGPWorld, bgp_world
from e2e.lb import Prober, kill
from e2e.lb_failover import percentile
from e2e.netns import HarnessError

ALL = {"node-1", "node-2", "node-3"}
LONG_LIVED = 12  # connections held open across each rollout


def failover(world: BGPWorld, ip: str, victim: str) -> tuple[float, float, float]:
    """(seconds until the router dropped the dead node, share of connections failing meanwhile, seconds
    from the agent's restart until it is advertised again)."""
    node = world.node(victim)
    prober = Prober(SimpleNamespace(outside=world.client), ip, gap=0.02, timeout=0.3)  # type: ignore[arg-type]
    time.sleep(0.3)
    died = time.monotonic()
    world.cut(node)
    kill(world.lb.agent(victim))
    left = world.wait_next_hops(ip, ALL - {victim}, timeout=HOLD + 10)
    time.sleep(0.5)
    results = prober.stop()
    during = [ok for t, ok in results if died <= t < died + left]
    after = [ok for t, ok in results if t > died + left + 0.3]
    if not all(after):
        raise RuntimeError(f"{after.count(False)} connections failed after {victim} left the router")
    world.cut(node, False)
    world.lb.agent(victim).start(wait=False)
    back = world.wait_next_hops(ip, ALL, timeout=60)
    return left, (during.count(False) / len(during)) if during else 0.0, back


def hold(world: BGPWorld, ip: str) -> Any:
    """A long-lived connection (a few attempts: setting one up is not what is measured)."""
    for attempt in range(5):
        try:
            return world.cluster.open_connection(world.client, ip, 80, timeout=2.0)
        except HarnessError as err:
            print(f"opening a long-lived connection, attempt {attempt + 1}: {str(err).splitlines()[0]}",
                  file=sys.stderr)
            time.sleep(0.5)
    raise RuntimeError("cannot open a long-lived connection")


def rollout(world: BGPWorld, ip: str, name: str) -> tuple[int, int, int, float, int, int]:
    """(samples where the router did not forward to the node, samples, failed new connections, seconds until
    the node's session was established again after SIGTERM, established connections broken, held)."""
    samples: list[bool] = []
    held = [hold(world, ip) for _ in range(LONG_LIVED)]
    prober = Prober(SimpleNamespace(outside=world.client), ip, gap=0.05, timeout=1.0)  # type: ignore[arg-type]
    agent = world.lb.agent(name)
    stopped = time.monotonic()
    agent.stop()
    agent.start(wait=False)
    protocol = f"n{world.node(name).index}"
    back = None
    broken: set[int] = set()
    while time.monotonic() - stopped < 60:
        samples.append(name in world.next_hops(ip))
        if samples.count(False) == 1 and not samples[-1]:  # the route just went: connections in use now?
            broken |= {i for i, conn in enumerate(held) if not conn.exchange().ok}
        if back is None and "Established" in world.session_state(protocol):
            back = time.monotonic() - stopped
        if back is not None and time.monotonic() - stopped > back + 1.0:
            break
        time.sleep(0.02)
    results = prober.stop()
    if back is None:
        raise RuntimeError(f"{name}'s session did not come back within 60 s")
    agent.wait_synced(0, timeout=30)
    broken |= {i for i, conn in enumerate(held) if not conn.exchange().ok}
    for conn in held:
        conn.close()
    return samples.count(False), len(samples), sum(1 for _, ok in results if not ok), back, len(broken), len(held)


def rollouts(world: BGPWorld, ip: str, trials: int, label: str) -> tuple[str, list[float]]:
    gaps = total = failed = broken = held = 0
    established = []
    for i in range(trials):
        name = ("node-1", "node-3")[i % 2]
        g, n, f, e, b, h = rollout(world, ip, name)
        gaps, total, failed, broken, held = gaps + g, total + n, failed + f, broken + b, held + h
        established.append(e)
        print(f"rollout {i + 1} ({name}, {label}): missing from the router in {g} of {n} samples, {f} new "
              f"connections failed, {b} of {h} established ones broken, session back {e:.1f} s after SIGTERM",
              file=sys.stderr)
    return (f"{label}: over {trials} rollouts the router stopped forwarding to the restarted node in {gaps} of "
            f"{total} samples (every 20 ms); {failed} new connection(s) failed; {broken} of {held} established "
            "connections (open across the rollout, used when the route went and after) broke."), established


def set_graceful_restart(world: BGPWorld, on: bool) -> None:
    """enableGracefulRestart on the IPv4 peer (its sessions restart with the new option)."""
    world.patch_peer("router", enableGracefulRestart=on)
    time.sleep(1.0)
    world.wait_established()


def withdrawal(world: BGPWorld, rounds: int) -> tuple[list[float], list[float]]:
    local, deleted = [], []
    for i in range(rounds):
        name = f"local-{i}"
        world.lb.service(name, [world.lb.pods[1]], externalTrafficPolicy="Local")
        (ip,) = world.lb.wait_ingress(name)
        world.wait_next_hops(ip, {"node-2"}, timeout=20)
        started = time.monotonic()
        world.set_ready(name, False)
        world.wait_next_hops(ip, set(), timeout=5)
        local.append(time.monotonic() - started)
        world.set_ready(name, True)
        world.wait_next_hops(ip, {"node-2"}, timeout=5)
        started = time.monotonic()
        world.lb.delete_service(name)
        world.wait_next_hops(ip, set(), timeout=5)
        deleted.append(time.monotonic() - started)
    return local, deleted


def summary(label: str, values: list[float], unit: str = "s", scale: float = 1.0) -> str:
    v = [x * scale for x in values]
    return (f"| {label} | {len(v)} | {percentile(v, 0.5):.2f} | {percentile(v, 0.9):.2f} | {max(v):.2f} | "
            f"{statistics.mean(v):.2f} | {unit} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--output", help="also write the Markdown table here")
    args = parser.parse_args(argv)
    lines = []
    with bgp_world() as world:
        world.lb.service("steady", [world.lb.pods[0], world.lb.pods[2]])  # no endpoint on the victim, node-2
        (ip,) = world.lb.wait_ingress("steady")
        world.wait_next_hops(ip, ALL, timeout=30)
        left, share, back = [], [], []
        for i in range(args.trials):
            a, b, c = failover(world, ip, "node-2")
            left.append(a)
            share.append(b)
            back.append(c)
            print(f"failover {i + 1}: gone from the router in {a:.2f} s ({b:.0%} of connections failed "
                  f"meanwhile), advertised again {c:.2f} s after its agent started", file=sys.stderr)
        world.bfd_profile("fast", receiveInterval=100, transmitInterval=100, detectMultiplier=3)
        world.patch_peer("router", bfdProfile="fast")
        time.sleep(1.0)
        world.wait_established()
        world.wait_next_hops(ip, ALL, timeout=30)
        bfd_left = []
        for i in range(max(3, args.trials // 2)):
            a, b, c = failover(world, ip, "node-2")
            bfd_left.append(a)
            print(f"failover with BFD {i + 1}: gone from the router in {a:.2f} s ({b:.0%} of connections failed "
                  f"meanwhile), advertised again {c:.2f} s after its agent started", file=sys.stderr)
        world.patch_peer("router", bfdProfile=None)
        time.sleep(1.0)
        world.wait_established()
        world.wait_next_hops(ip, ALL, timeout=30)
        with_gr, established = rollouts(world, ip, args.trials, "graceful restart (the default)")
        set_graceful_restart(world, False)
        without_gr, _ = rollouts(world, ip, max(2, args.trials // 2), "enableGracefulRestart: false")
        set_graceful_restart(world, True)
        local, deleted = withdrawal(world, args.trials)
    lines += ["| measure | trials | p50 | p90 | max | mean | unit |", "|---|---|---|---|---|---|---|",
              summary(f"node dies (cable, agent killed) -> gone from the router (hold time {HOLD} s)", left),
              summary("... share of new connections failing until then", share, "%", 100),
              summary("node returns: agent started -> advertised again", back),
              summary("with a BFDProfile (100 ms x 3): node dies -> gone from the router", bfd_left),
              summary("rollout (SIGTERM, start): session established again after SIGTERM", established),
              summary("eTP Local: last local endpoint not ready -> withdrawn", local, "ms", 1000),
              summary("Service deleted -> withdrawn", deleted, "ms", 1000)]
    lines += ["", f"- {with_gr}", f"- {without_gr}"]
    text = "\n".join(lines)
    print(text)
    if args.output:
        with open(args.output, "w") as out:
            out.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
