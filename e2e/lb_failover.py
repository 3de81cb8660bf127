"""L2 failover, measured: the node announcing a LoadBalancer address dies (agent SIGKILLed and its LAN
link taken down) while a client opens a new TCP connection every 20 ms; failover is the time from the
kill to the first connection that succeeds through another node. The dead node then comes back (link
up, agent restarted) before the next trial.

    python -m e2e.lb_failover --trials 20 [--output FILE]

prints p50/p90/p99/max and each trial (the figures in BENCHMARKS.md come from here).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from e2e.lb import LBWorld, Prober, kill, lb_world, set_link

ADDRESS = "198.18.0.220"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


Trial = tuple[str, str, float, float]  # dead node, successor, seconds until flowing, share failing afterwards


def one_failover(world: LBWorld, ip: str, give_up: float = 15.0, watch: float = 2.5) -> Trial:
    """Kill the announcer of `ip`; returns (dead node, new announcer, seconds from its death until
    connections succeeded again, share of the connections started 1 s or later after it that failed).
    The share says whether connections balanced to the dead node's endpoint keep failing (one in three
    here, until Kubernetes marks the endpoint not ready; none with --lb-avoid-dead-node-endpoints)."""
    answering = world.who_answers(ip)
    if len(answering) != 1:
        raise RuntimeError(f"expected one node answering for {ip}, got {answering}")
    victim = world.cluster.node(answering[0])
    prober = Prober(world, ip, duration=give_up + 5)
    time.sleep(0.3)  # the prober is up and succeeding
    # The node dies: its link first (heartbeats and ARP answers stop leaving it), then its agent. Timed
    # from before the link command, so the figure includes that command's own latency (conservative).
    moment = time.monotonic()
    set_link(world, victim, up=False)
    kill(world.agent(victim.name))
    deadline = moment + give_up
    while time.monotonic() < deadline:
        time.sleep(0.1)
        if prober.process.poll() is not None:
            break
        if len(world.who_answers(ip, wait=0.1)) == 1 and time.monotonic() - moment > 0.2:
            time.sleep(watch)  # the prober's view of what follows the switch
            break
    prober.stop()
    after = prober.recovered_after(moment)
    successor = world.who_answers(ip)
    if after is None:
        seen = [(round(t - moment, 3), ok) for t, ok in prober.results if t >= moment - 0.1]
        raise RuntimeError(f"no connection succeeded within {give_up} s after {victim.name} died "
                           f"(now answering: {successor}; attempts since: {seen[:10]} ... {seen[-10:]})")
    late = [ok for t, ok in prober.results if t >= moment + 1.0]
    share = sum(1 for ok in late if not ok) / len(late) if late else 0.0
    return victim.name, successor[0] if successor else "?", after - moment, share


def revive(world: LBWorld, node_name: str) -> None:
    node = world.cluster.node(node_name)
    set_link(world, node, up=True)
    world.agent(node_name).start(wait=True, timeout=30)
    time.sleep(1.5)  # heard by its peers, settled, and (if it is the rightful node) announcing again


def run(world: LBWorld, trials: int) -> list[Trial]:
    world.pool("failover", f"{ADDRESS}/32", autoAssign=False)
    world.l2("l2")
    world.service("failover", world.pods, annotations={"metallb.io/address-pool": "failover"})
    ips = world.wait_ingress("failover")
    if ips != [ADDRESS]:
        raise RuntimeError(f"the failover Service got {ips}")
    if not world.eventually_served(ADDRESS).ok:
        raise RuntimeError(f"{ADDRESS} is not served")
    out = []
    for _ in range(trials):
        trial = one_failover(world, ADDRESS)
        out.append(trial)
        revive(world, trial[0])
    world.delete_service("failover")
    return out


def summary(times: list[float]) -> str:
    return (f"p50 {percentile(times, 0.5) * 1000:.0f} ms, p90 {percentile(times, 0.9) * 1000:.0f} ms, "
            f"p99 {percentile(times, 0.99) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms, "
            f"mean {statistics.mean(times) * 1000:.0f} ms")


def report(results: list[Trial], settings: str = "default settings") -> str:
    lines = [f"L2 failover over {len(results)} trials (3 nodes, {settings}: heartbeat 0.1 s, dead after 0.5 s)",
             "traffic flowing again (first connection through the new node): " + summary([r[2] for r in results]),
             f"connections failing from 1 s after the link went down: "
             f"{100 * statistics.mean(r[3] for r in results):.1f}% (the dead node's endpoint still chosen)"]
    lines += [f"  trial {i + 1}: {victim} died -> {successor}: flowing after {s * 1000:.0f} ms, "
              f"{100 * share:.0f}% failing later" for i, (victim, successor, s, share) in enumerate(results)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--output", help="also write the report to this file")
    parser.add_argument("--avoid-dead-node-endpoints", action="store_true",
                        help="run the agents with --lb-avoid-dead-node-endpoints")
    args = parser.parse_args(argv)
    extra = ("--lb-avoid-dead-node-endpoints",) if args.avoid_dead_node_endpoints else ()
    with lb_world(extra_args=extra) as world:
        text = report(run(world, args.trials), "--lb-avoid-dead-node-endpoints" if extra else "default settings")
    print(text)
    if args.output:
        with open(args.output, "w") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
