"""Command line: `nftproxy run | cleanup | demo | bench`."""

from __future__ import annotations

import argparse
import gc
import logging
import math
import queue
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from .config import ConfigError, ProxyConfig, default_node_name, parse_cidr_list
from .configfile import FileSettings, load_config_file, parse_bind_address, parse_duration
from .logs import setup_logging

if TYPE_CHECKING:  # lb.agent imports the kubernetes client: ~0.4 s that --once from manifests need not pay
    from .agent.kube import ResourceWatcher
    from .agent.manifest_watch import ManifestWatcher
    from .lb.agent import LBSettings
    from .objects.parse import InvalidObject

log = logging.getLogger("nftproxy")

DEFAULTS = {
    "min_sync_period": "1s",
    "sync_period": "1h",
    "metrics_bind_address": "127.0.0.1:10249",
    "healthz_bind_address": "0.0.0.0:10256",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nftproxy", description="Kubernetes Services as nftables maps")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="keep this node's nftables in step with Services and EndpointSlices")
    src = run.add_argument_group("where objects come from")
    src.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, then the in-cluster service account)")
    src.add_argument("--manifests", help="read objects from a YAML/JSON file or directory instead of the API")
    src.add_argument("--poll-interval", type=float, default=1.0, help="seconds between manifest re-reads")
    run.add_argument("--config", help="a KubeProxyConfiguration YAML file; flags given explicitly override it")
    run.add_argument("--once", action="store_true", help="sync once and exit (0 on success)")
    run.add_argument("--dry-run", action="store_true", help="print the transaction instead of applying it")
    run.add_argument("--node-name", "--hostname-override", dest="node_name", default=None,
                     help="this node's name (default: the host name)")
    run.add_argument("--cluster-cidr", default=None, help="pod CIDRs, comma-separated, at most one per family")
    run.add_argument("--service-cidr", default=None,
                     help="Service CIDRs, comma-separated, at most one per family: unallocated addresses are dropped")
    run.add_argument("--nodeport-addresses", default=None,
                     help="CIDRs whose local addresses accept NodePorts (default: every local address but loopback)")
    run.add_argument("--masquerade-all", action="store_true", default=None, help="masquerade all traffic to Services")
    run.add_argument("--min-sync-period", default=None, help="at most one sync per this period (default 1s; 0 allowed)")
    run.add_argument("--sync-period", default=None, help="full rebuild every this period (default 1h)")
    run.add_argument("--metrics-bind-address", default=None, help="host:port for /metrics (default 127.0.0.1:10249)")
    run.add_argument("--healthz-bind-address", default=None,
                     help="host:port for /healthz and /livez (default 0.0.0.0:10256)")
    run.add_argument("--log-format", choices=("plain", "json"), default=None)
    run.add_argument("--no-repair-drift", dest="repair_drift", action="store_false",
                     help="leave changes other programs make to the table until the next full rebuild (to see "
                          "them with `nftproxy status`); by default the agent rebuilds the table at once")
    lb = run.add_argument_group("bare-metal LoadBalancer (MetalLB's IPAddressPool, L2Advertisement, BGPPeer, "
                                "BGPAdvertisement; API mode only)")
    lb.add_argument("--no-load-balancer", dest="lb_enabled", action="store_false", default=None,
                    help="leave LoadBalancer addresses to another controller (e.g. while MetalLB still runs)")
    lb.add_argument("--load-balancer-class", dest="lb_class", default=None,
                    help="serve Services of this spec.loadBalancerClass only (default: Services without a class)")
    lb.add_argument("--lb-lease-namespace", default=None,
                    help="namespace of the allocator's Lease (default kube-system)")
    lb.add_argument("--lb-lease-duration", type=float, default=15.0,
                    help="seconds without renewal before another agent takes the allocator over")
    lb.add_argument("--lb-heartbeat-port", type=int, default=None,
                    help="UDP port of the node heartbeats (default 7473)")
    lb.add_argument("--lb-heartbeat-interval", type=float, default=0.1, help="seconds between heartbeats")
    lb.add_argument("--lb-heartbeat-timeout", type=float, default=0.5,
                    help="seconds of silence before a node counts as dead and its addresses move")
    lb.add_argument("--lb-heartbeat-key-file", default=None,
                    help="file with a shared secret: heartbeats are then signed (HMAC-SHA256) and checked")
    lb.add_argument("--lb-avoid-dead-node-endpoints", action="store_true",
                    help="beyond kube-proxy: when heartbeats say a node died, send no new connections to its "
                         "endpoints from this node until it returns (Kubernetes takes ~50 s to mark them)")
    lb.add_argument("--lb-handover", type=float, default=1.0,
                    help="on SIGTERM, seconds to keep answering after peers were told (successor announces first)")
    lb.add_argument("--lb-bgp-dir", default=None,
                    help="BGP mode: where BIRD's configuration and control socket live "
                         "(default /tmp/nftproxy-bgp-NODE-NETNS)")
    lb.add_argument("--lb-bird", default="bird", help="BGP mode: the BIRD 2 daemon to run (default: bird from PATH)")
    lb.add_argument("--lb-bgp-restart-time", type=int, default=120,
                    help="BGP mode: graceful restart time, seconds routers keep this node's routes while its agent "
                         "restarts (1-4095)")

    cleanup = sub.add_parser("cleanup", help="remove everything nftproxy created, and nothing else")
    cleanup.add_argument("--kube-proxy", action="store_true",
                         help="instead, remove what kube-proxy left behind (its nftables tables and iptables "
                              "KUBE-* chains) so this node can switch to nftproxy")
    cleanup.add_argument("--log-format", choices=("plain", "json"), default="plain")

    demo = sub.add_parser("demo", help="build a namespace cluster, apply example Services, show traffic")
    demo.add_argument("--keep", action="store_true", help="leave the demo cluster running until Ctrl-C")
    demo.add_argument("--log-format", choices=("plain", "json"), default="plain")

    bench = sub.add_parser("bench", help="cold sync and one-Service changes against nft -f, at scale")
    bench.add_argument("--services", default="1000,10000,30000", help="comma-separated Service counts")
    bench.add_argument("--endpoints", type=int, default=10)
    bench.add_argument("--changes", type=int, default=50, help="one-Service changes measured per kind")
    bench.add_argument("--output", help="also write the results as Markdown to this file")
    bench.add_argument("--log-format", choices=("plain", "json"), default="plain")

    from .ops.commands import add_parsers  # explain, status

    add_parsers(sub)
    return parser


@dataclass(frozen=True, slots=True)
class RunSettings:
    proxy: ProxyConfig
    min_sync_period: float
    sync_period: float
    metrics_bind: tuple[str, int] | None
    healthz_bind: tuple[str, int] | None
    kubeconfig: str | None
    log_format: str
    lb: LBSettings | None  # None with --once / --dry-run: one sync from manifests, no LoadBalancer half


def settings_from_args(args: argparse.Namespace) -> RunSettings:
    """Defaults, then the --config file, then flags given explicitly."""
    file = load_config_file(args.config) if args.config else FileSettings()

    def choose(flag: object, from_file: object, default: object) -> object:
        return flag if flag is not None else (from_file if from_file is not None else default)

    nodeport = args.nodeport_addresses if args.nodeport_addresses is not None else list(file.nodeport_addresses or ())
    proxy = ProxyConfig(
        node_name=str(choose(args.node_name, file.hostname_override, None) or default_node_name()),
        cluster_cidrs=parse_cidr_list(
            "--cluster-cidr", cast("str | list[str]", choose(args.cluster_cidr, file.cluster_cidr, "")), True),
        service_cidrs=parse_cidr_list("--service-cidr", args.service_cidr or "", True),
        nodeport_cidrs=parse_cidr_list("--nodeport-addresses", nodeport, False),
        masquerade_all=bool(choose(args.masquerade_all, file.masquerade_all, False)),
    )
    min_sync = parse_duration("--min-sync-period",
                              choose(args.min_sync_period, file.min_sync_period, DEFAULTS["min_sync_period"]))
    sync = parse_duration("--sync-period", choose(args.sync_period, file.sync_period, DEFAULTS["sync_period"]))
    if sync <= 0:
        raise ConfigError("--sync-period: must be greater than 0")
    if not math.isfinite(args.poll_interval) or args.poll_interval <= 0:  # argparse's float() takes nan, inf, -1
        raise ConfigError("--poll-interval: must be a finite number of seconds greater than 0, "
                          f"got {args.poll_interval}")
    return RunSettings(
        proxy=proxy,
        min_sync_period=min_sync,
        sync_period=sync,
        metrics_bind=parse_bind_address("--metrics-bind-address", choose(
            args.metrics_bind_address, file.metrics_bind_address, DEFAULTS["metrics_bind_address"])),
        healthz_bind=parse_bind_address("--healthz-bind-address", choose(
            args.healthz_bind_address, file.healthz_bind_address, DEFAULTS["healthz_bind_address"])),
        kubeconfig=args.kubeconfig or file.kubeconfig,
        log_format=str(choose(args.log_format, file.log_format, "plain")),
        lb=None if args.once or args.dry_run else lb_settings(args, file),
    )


def lb_settings(args: argparse.Namespace, file: FileSettings) -> LBSettings:
    from .lb.agent import LBSettings

    key = None
    if getattr(args, "lb_heartbeat_key_file", None):
        try:
            key = open(args.lb_heartbeat_key_file, "rb").read().strip()
        except OSError as err:
            raise ConfigError(f"--lb-heartbeat-key-file: {err.strerror}") from None
        if len(key) < 16:
            raise ConfigError("--lb-heartbeat-key-file: the key needs at least 16 bytes")
    port = args.lb_heartbeat_port if args.lb_heartbeat_port is not None else (file.lb_heartbeat_port or 7473)
    if not 1 <= port <= 65535:
        raise ConfigError(f"--lb-heartbeat-port: expected 1-65535, got {port}")
    for flag, value in (("--lb-heartbeat-interval", args.lb_heartbeat_interval),
                        ("--lb-heartbeat-timeout", args.lb_heartbeat_timeout),
                        ("--lb-lease-duration", args.lb_lease_duration)):
        if not value > 0 or value == float("inf"):  # nan and inf pass argparse's float()
            raise ConfigError(f"{flag}: must be a finite number greater than 0, got {value}")
    if args.lb_handover != args.lb_handover or args.lb_handover == float("inf"):
        raise ConfigError(f"--lb-handover: must be a finite number of seconds, got {args.lb_handover}")
    if args.lb_heartbeat_timeout <= args.lb_heartbeat_interval:
        raise ConfigError("--lb-heartbeat-timeout: must be longer than --lb-heartbeat-interval")
    restart = getattr(args, "lb_bgp_restart_time", 120)
    if not 1 <= restart <= 4095:
        raise ConfigError(f"--lb-bgp-restart-time: expected 1-4095 seconds, got {restart}")
    enabled = args.lb_enabled if args.lb_enabled is not None else (file.lb_enabled if file.lb_enabled is not None
                                                                  else True)
    return LBSettings(
        enabled=enabled,
        load_balancer_class=args.lb_class or file.lb_class,
        lease_namespace=args.lb_lease_namespace or file.lb_lease_namespace or "kube-system",
        lease_duration=args.lb_lease_duration,
        lease_renew=max(0.2, min(2.0, args.lb_lease_duration / 4)),
        heartbeat_port=port,
        heartbeat_interval=args.lb_heartbeat_interval,
        heartbeat_dead_after=args.lb_heartbeat_timeout,
        heartbeat_key=key,
        handover_seconds=max(0.0, args.lb_handover),
        avoid_dead_node_endpoints=bool(getattr(args, "lb_avoid_dead_node_endpoints", False)),
        bgp_dir=getattr(args, "lb_bgp_dir", None),
        bird_binary=getattr(args, "lb_bird", None) or "bird",
        bgp_restart_time=restart,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_format or "plain")
    try:
        if args.command == "run":
            settings = settings_from_args(args)
            setup_logging(settings.log_format)
            return cmd_run(args, settings)
        if args.command == "cleanup":
            return cmd_cleanup_kube_proxy() if args.kube_proxy else cmd_cleanup()
        if args.command in ("explain", "status"):
            from .ops.commands import run as run_ops

            return run_ops(args)
        if args.command in ("demo", "bench"):
            return cmd_from_checkout(args)
    except ConfigError as err:
        log.error("invalid configuration: %s", err)
        return 2
    return 2


#: what `nftproxy demo` and `nftproxy bench` run, in a source checkout's test bed
FROM_CHECKOUT = {"demo": ("e2e.demo", "its namespace cluster (e2e/)"),
                 "bench": ("e2e.bench", "the benchmark (e2e/bench/)")}


def cmd_from_checkout(args: argparse.Namespace) -> int:
    """`nftproxy demo` and `nftproxy bench`. They live in the test bed of a source checkout (e2e/), which
    neither the package nor the DaemonSet's image holds: the one place the package reaches into it
    (tests/test_package_boundary.py allows this function and no other)."""
    from importlib.util import find_spec

    module, what = FROM_CHECKOUT[args.command]
    if find_spec("e2e") is None or find_spec(module) is None:  # the image carries the agent only
        log.error("nftproxy %s needs a source checkout: %s is not installed here", args.command, what)
        return 2
    if args.command == "demo":
        from e2e.demo.launcher import run_demo

        return run_demo(keep=args.keep)
    from e2e.bench.driver import run_bench

    counts = [int(x) for x in args.services.split(",") if x.strip()]
    return run_bench(counts, args.endpoints, args.changes, args.output)


def cmd_cleanup() -> int:
    from .kernel import KernelError
    from .kernel.nft import NftablesKernel

    try:
        NftablesKernel().delete_table()
    except KernelError as err:
        log.error("cleanup failed: %s", err)
        return 1
    log.info("removed table inet nftproxy")
    return 0


def cmd_cleanup_kube_proxy() -> int:
    from .kernel.kube_proxy import remove_kube_proxy_leftovers
    from .kernel.nft import NftablesKernel

    result = remove_kube_proxy_leftovers(NftablesKernel().delete_foreign_table)
    for line in result.removed:
        log.info("removed %s", line)
    for line in result.failed:
        log.error("could not remove %s", line)
    if result.failed:
        log.error("kube-proxy's rules are NOT all gone: %d step(s) failed (above); do not start nftproxy "
                  "on this node until they are", len(result.failed))
        return 1
    if not result.removed:
        log.info("nothing of kube-proxy's was left on this node")
    return 0


def cmd_once(args: argparse.Namespace, settings: RunSettings) -> int:
    """--once / --dry-run from manifests: one full sync, exit code says whether the kernel took it.

    A cold start is what the user waits for, so: the cycle collector stays off (a one-shot process
    builds no garbage cycles worth finding, and passes over a million young objects cost as much as
    reading them), and Services and slices are parsed while the rebuild streams (`Proxier.defer`), each
    read object dropped once parsed.
    """
    gc.disable()
    from .agent.manifest_source import ManifestSource
    from .agent.proxier import Proxier
    from .kernel import KernelError
    from .kernel.fake import FakeKernel
    from .kernel.nft import NftablesKernel
    from .objects.manifests import ManifestError

    try:
        objects = ManifestSource(args.manifests).poll(strict=True).upserts
    except ManifestError as err:
        log.error("%s", err)
        return 1
    proxier = Proxier(settings.proxy, FakeKernel() if args.dry_run else NftablesKernel())
    proxier.defer(objects)
    del objects
    if args.dry_run:
        sys.stdout.write(proxier.compute().transaction.render())
        return 0
    try:
        result = proxier.sync()
    except KernelError as err:
        log.error("sync failed: %s", err)
        return 1
    log.info("synced %d Service(s): full rebuild, %d operation(s) in %.1f ms",
             result.services_synced, result.operations, result.seconds * 1000)
    return 0


def cmd_run(args: argparse.Namespace, settings: RunSettings) -> int:
    if args.once or args.dry_run:
        if not args.manifests:
            log.error("--once and --dry-run need --manifests PATH")
            return 2
        return cmd_once(args, settings)

    from .agent.health import HealthState, serve_health
    from .agent.loop import SyncLoop
    from .agent.metrics import Metrics
    from .agent.proxier import Proxier
    from .agent.updates import Update
    from .kernel.nft import NftablesKernel

    stop = threading.Event()
    updates: queue.Queue[Update] = queue.Queue()
    metrics = Metrics()
    health = HealthState(timeout=2 * settings.sync_period)
    recorder = None
    lb_agent = None
    starters: list[ManifestWatcher | ResourceWatcher]

    if args.manifests:
        from .agent.manifest_source import ManifestSource
        from .agent.manifest_watch import ManifestWatcher

        sources = ["manifests"]
        starters = [ManifestWatcher(ManifestSource(args.manifests), updates, stop, args.poll_interval)]
    else:
        from .agent.recorder import EventRecorder
        from .kube_client import api_clients

        core, discovery = api_clients(settings.kubeconfig)
        from .agent.kube import ResourceWatcher
        from .lb.agent import Tee

        node = settings.proxy.node_name
        recorder = EventRecorder(core, node)
        feed: Any = updates
        slice_feed: Any = updates
        if settings.lb is not None and settings.lb.enabled:
            lb_agent = build_lb_agent(settings.lb, settings, core, recorder, metrics,
                                      lambda: loop.sync_count > 0 and loop.failures == 0, updates)
            feed = Tee(updates, lb_agent.queue)
            slice_feed = lb_agent.slice_feed(updates)
        starters = [
            ResourceWatcher("Service", core.list_service_for_all_namespaces, feed, stop),
            ResourceWatcher("EndpointSlice", discovery.list_endpoint_slice_for_all_namespaces, slice_feed, stop),
            ResourceWatcher("Node", core.list_node, updates, stop, field_selector=f"metadata.name={node}"),
        ]
        sources = ["Service", "EndpointSlice", "Node"]
        if lb_agent is not None:
            starters += lb_agent.watchers(stop)

    def on_invalid(err: InvalidObject) -> None:
        metrics.invalid_total.labels(getattr(err, "kind", "")).inc()
        if recorder is not None:
            recorder.invalid(err)

    from .kernel.conntrack import ConntrackCleaner

    import time as _time

    from .agent.healthcheck import HealthCheckServers

    cleaner = ConntrackCleaner()
    health_checks = HealthCheckServers(proxy_healthy=lambda: health.healthy(_time.time()))
    from .agent.drift import watch_for_drift
    from .agent.updates import Resync

    kernel: Any = NftablesKernel()
    if args.repair_drift:
        kernel = watch_for_drift(kernel, lambda reason: updates.put(Resync(reason)), stop)
    proxier = Proxier(settings.proxy, kernel, on_invalid=on_invalid,
                      on_stale_flows=lambda flows: cleaner.delete(flows), on_health_checks=health_checks.update)
    after_sync = None
    if lb_agent is not None:
        agent = lb_agent

        def after_sync(result: Any) -> None:
            inputs = proxier.committed_inputs
            agent.after_sync({ref: (inputs[ref][0].load_balancer_ips if ref in inputs else ())
                              for ref in result.synced_refs})

    loop = SyncLoop(proxier, updates, sources, settings.min_sync_period, settings.sync_period, health, metrics,
                    after_sync=after_sync)
    try:
        if settings.healthz_bind:
            serve_health(health, *settings.healthz_bind)
        if settings.metrics_bind:
            from .ops.agent_status import StatusProvider, serve_metrics_and_status

            serve_metrics_and_status(metrics.registry, StatusProvider(proxier, loop, health, lb_agent),
                                     *settings.metrics_bind)
            log.info("serving /metrics and /status on %s:%d", *settings.metrics_bind)
    except OSError as err:
        log.error("cannot listen for /healthz or /metrics (%s): is another proxy (kube-proxy?) running on this "
                  "node? Change --healthz-bind-address / --metrics-bind-address or stop it", err.strerror or err)
        return 1

    def _stop(signum: int, _frame: object) -> None:
        log.info("received %s: exiting, rules stay in place", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info("nftproxy on node %s, objects from %s", settings.proxy.node_name,
             args.manifests or "the Kubernetes API")
    if lb_agent is not None:
        from kubernetes import client as k8s_client

        lb_agent.start(k8s_client.CoordinationV1Api(core.api_client))
    for i, starter in enumerate(starters):
        starter.start()
        health.require(f"{getattr(starter, 'kind', 'manifests')}#{i}", starter.alive)
    loop.run(stop)
    if lb_agent is not None:
        lb_agent.shutdown()
    return 0


def build_lb_agent(lb: LBSettings, settings: RunSettings, core: Any, recorder: Any, metrics: Any,
                   proxy_ready: Callable[[], bool], proxy_updates: Any) -> Any:
    """The LoadBalancer half: allocator (leader only), heartbeats, carrier watch, ARP/NDP responder."""
    from .lb.agent import LoadBalancerAgent
    from .lb.links import CarrierWatch, interface_of_address
    from .lb.membership import Membership
    from .lb.responder import L2Responder

    node = settings.proxy.node_name

    def membership(on_change: Callable[[frozenset[str]], None]) -> Membership:
        return Membership(node, "::", port=lb.heartbeat_port, interval=lb.heartbeat_interval,
                          dead_after=lb.heartbeat_dead_after, key=lb.heartbeat_key, on_change=on_change)

    def default_interface(address: str | None) -> str | None:
        return interface_of_address(address) if address else None

    return LoadBalancerAgent(
        lb, node, core, core.api_client,
        responder_factory=lambda on_conflict: L2Responder(on_conflict=on_conflict),
        membership_factory=membership,
        carrier_watch_factory=lambda on_change: CarrierWatch([], on_change),
        interface_of_address=default_interface,
        proxy_ready=proxy_ready,
        events=recorder,
        metrics=metrics,
        node_of_mac=node_of_mac,
        proxy_updates=proxy_updates,
    )


def node_of_mac(mac: str, peers: Any) -> str | None:
    """Which peer node owns `mac`, from this node's neighbour table (heartbeats keep it filled)."""
    try:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            for neigh in ipr.get_neighbours():
                if (neigh.get_attr("NDA_LLADDR") or "").lower() != mac.lower():
                    continue
                dst = neigh.get_attr("NDA_DST")
                for name, address in peers.items():
                    if address == dst:
                        return str(name)
    except Exception as err:  # noqa: BLE001 - a lookup that fails just leaves the other side unnamed
        log.debug("neighbour lookup for %s failed: %s", mac, err)
    return None
