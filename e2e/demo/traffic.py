"""Step 3 of the demo: requests through each Service, from a pod or from outside, checked against what
Kubernetes promises (they land on the Service's endpoints; the pods see the source they should), and
shown: where they landed, with a bar per pod, and which source address each pod saw."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from e2e.demo.services import CLUSTER_IP, EXTERNAL_IP, LB_IP, NODE_PORT, SERVICE_PORT
from e2e.demo.signals import signals_deferred
from e2e.demo.terminal import Terminal
from e2e.netns import HarnessError

REQUESTS = 30  # per Service
BAR_WIDTH = 20


@dataclass
class Check:
    """Requests from one place to one Service frontend, and what the pods must see."""

    kind: str  # what the output calls the Service kind
    sender: Any  # Pod or Client
    sender_label: str
    address: str
    port: int
    target_label: str  # e.g. "node-1 198.18.0.11:30080"
    expected_sources: set[str]
    explanation: str
    results: list[Any] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class Traffic:
    """The requests of step 3 and their display, on the demo's cluster."""

    def __init__(self, cluster: Any, web: list[Any], client_pod: Any, outside: Any, term: Terminal) -> None:
        self.cluster = cluster  # e2e.netns.NamespaceCluster
        self.web = web  # the three serving pods
        self.client_pod = client_pod
        self.outside = outside
        self.t = term

    def send(self) -> list[Check]:
        """Every check, run and shown in turn."""
        t = self.t
        t.step(3, f"Traffic: {REQUESTS} requests through each Service (a new TCP connection each)")
        n1, n2 = self.cluster.nodes
        # the outside client knows no Service addresses: as a router would, send them to a node
        with signals_deferred():
            self.cluster.add_route(self.outside, f"{EXTERNAL_IP}/32", n2.ip)
            self.cluster.add_route(self.outside, f"{LB_IP}/32", n1.ip)
        t.say(t.dim(f"      (the outside client got routes: {EXTERNAL_IP} via {n2.name}, {LB_IP} via {n1.name})"))
        checks = self._make_checks()
        for check in checks:
            self._run_check(check)
            self._show_check(check)
        return checks

    def _make_checks(self) -> list[Check]:
        n1, n2 = self.cluster.nodes
        client, outside = self.client_pod, self.outside
        return [
            Check("ClusterIP", client, f"client pod {client.ip} ({client.node.name})", CLUSTER_IP, SERVICE_PORT,
                  f"{CLUSTER_IP}:{SERVICE_PORT}", {client.ip},
                  "pod-to-ClusterIP keeps the pod's source: the pods saw the client pod's own address, "
                  "and only the destination was rewritten (DNAT) on the client's node"),
            Check("NodePort", outside, f"outside {outside.ip}", n1.ip, NODE_PORT,
                  f"{n1.name} {n1.ip}:{NODE_PORT}", {n1.ip, n1.pod_gateway},
                  f"external traffic is masqueraded to the node's address: the pods saw {n1.name} (the address "
                  f"it sends from toward each pod), never the client's {outside.ip}, so their replies go back "
                  f"through {n1.name} to be un-NATed"),
            Check("externalIPs", outside, f"outside {outside.ip}", EXTERNAL_IP, SERVICE_PORT,
                  f"{EXTERNAL_IP}:{SERVICE_PORT} (routed via {n2.name})", {n2.ip, n2.pod_gateway},
                  f"the outside client routes the externalIP via {n2.name}, which DNATs it to a pod and "
                  f"masquerades it like a NodePort: the pods saw {n2.name}"),
            Check("LoadBalancer", outside, f"outside {outside.ip}", LB_IP, SERVICE_PORT,
                  f"{LB_IP}:{SERVICE_PORT} (routed via {n1.name})", {n1.ip, n1.pod_gateway},
                  f"the status.loadBalancer.ingress IP arrives at {n1.name} as a cloud load balancer would "
                  f"deliver it, and is handled like an externalIP: DNAT plus masquerade to {n1.name}"),
        ]

    def _run_check(self, check: Check) -> None:
        try:
            # one request first: if the Service does not answer at all, say so at once instead of
            # waiting for every request to time out
            check.results = self.cluster.probe(check.sender, check.address, check.port, count=1, timeout=2.0)
            if check.results[0].ok:
                check.results += self.cluster.probe(check.sender, check.address, check.port,
                                                    count=REQUESTS - 1, timeout=2.0)
        except HarnessError as err:
            check.problems.append(f"the probe client failed: {err}")
            return
        web = {p.name for p in self.web}
        landed = Counter(r.pod if r.ok else f"error:{r.error}" for r in check.results)
        errors = {k.removeprefix("error:"): n for k, n in landed.items() if k.startswith("error:")}
        strangers = {k: n for k, n in landed.items() if not k.startswith("error:") and k not in web}
        if errors and len(check.results) == 1:
            check.problems.append(f"the first request failed ({next(iter(errors))}), so no more were sent")
        elif errors:
            what = ", ".join(f"{n}x {kind}" for kind, n in errors.items())
            check.problems.append(f"{sum(errors.values())} of {len(check.results)} requests failed: {what}")
        if strangers:
            check.problems.append(f"requests landed outside the Service's endpoints: {dict(strangers)}")
        seen = {r.client for r in check.results if r.ok}
        wrong = seen - check.expected_sources
        if wrong:
            expected = " or ".join(self._describe(a) for a in sorted(check.expected_sources))
            got = ", ".join(self._describe(a) for a in sorted(wrong))
            check.problems.append(f"the pods saw source {got}; expected {expected}")

    def _describe(self, address: str | None) -> str:
        labels: dict[str, str] = {}
        for node in self.cluster.nodes:
            labels[node.ip] = f"{node.name}, LAN address"
            labels[node.pod_gateway] = f"{node.name}, its pod-side address"
        for pod in self.cluster.pods.values():
            labels[pod.ip] = "the client pod" if pod is self.client_pod else f"pod {pod.name}"
        labels[self.outside.ip] = "the outside client"
        label = labels.get(address or "")
        return f"{address} ({label})" if label else str(address)

    def _show_check(self, check: Check) -> None:
        t = self.t
        total = len(check.results) or 1
        t.say()
        t.say(f"  {t.bold(f'{check.kind:<13}')} {check.sender_label} {t.arrow} {check.target_label}")
        by_pod: dict[str, list[Any]] = {}
        for r in check.results:
            if r.ok:
                by_pod.setdefault(r.pod, []).append(r)
        names = [p.name for p in self.web] + sorted(set(by_pod) - {p.name for p in self.web})
        pods = {p.name: p for p in self.cluster.pods.values()}
        for name in names:
            hits = by_pod.get(name, [])
            share = len(hits) / total
            bar = t.bar * round(share * BAR_WIDTH)
            node = pods[name].node.name if name in pods else "?"
            sources = Counter(r.client for r in hits)
            saw = ", ".join(self._describe(a) + (f" x{n}" if len(sources) > 1 else "")
                            for a, n in sources.most_common())
            t.say(f"      {name:<6} {node:<7} {len(hits):>3} {round(share * 100):>3}%  "
                  f"{t.cyan(bar.ljust(BAR_WIDTH)) if bar else ' ' * BAR_WIDTH}  "
                  + (f"saw {saw}" if hits else t.dim("no requests")))
        if check.ok:
            t.say(t.wrap(check.explanation, 6, t.tick, t.green))
            idle = [name for name in names if not by_pod.get(name)]
            if idle:
                t.say(t.dim(t.wrap(f"({', '.join(idle)} got none of {total} this time: every connection picks an "
                                   "endpoint at random)", 8)))
        else:
            for problem in check.problems:
                t.say(t.wrap(problem, 6, t.cross, t.red))
