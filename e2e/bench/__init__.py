"""`nftproxy bench`: cold start, cold sync and one-Service changes at scale, next to `nft -f` of the same ruleset.

Safety first: libnftables acts on the network namespace of the calling process, so nothing here
ever touches the host's nftables. The driver creates a throwaway namespace (nfp-bench-<random>),
runs one measuring process per Service count inside it (`ip netns exec NS python -m e2e.bench
--inside ...`, which refuses to run in the namespace it was started from) and deletes the namespace
at the end, on errors and on Ctrl-C too. Counts run in increasing order; a probe at 1,000 Services
comes first, and the run stops before a larger count when the probe's cold sync took more than 5 s
or a step (one cold start, loading, one cold sync, one `nft -f`, the changes; not counting the repeated
runs that only steady the figures) took more than 60 s.

Per count N (E endpoints per Service, every Service a ClusterIP with one TCP port and one
EndpointSlice; cluster IPs from 198.18.0.0/15, endpoints from 100.64.0.0/10: these addresses are
only map elements in the throwaway namespace, no packet is sent):

1. Cold start, the headline: the objects are written as one JSON List, and `nftproxy run
   --manifests DIR --once` is timed as a new process from spawn to exit (the table absent), its
   memory and its nft child's sampled from /proc. The ruleset it leaves is dumped (`nft list
   table`) and `nft -f` of the dump is timed in a new, empty namespace (`unshare -n`). Three
   interleaved runs of each; medians compared. Parsing speed is measured on its own.
2. N Services and N slices are generated as API dicts and fed to `Proxier.upsert` one at a time, so
   the dicts never accumulate and do not count in the memory figures.
3. Cold sync: `proxier.sync()` with the table absent (a full rebuild, streamed to nft). The same
   rebuild is written to a file (checked to be what was streamed), the table deleted, and `nft -f
   FILE` is timed as a child process. Both start from the same state: the table absent. Three
   interleaved runs of each; medians compared.
4. Memory: VmRSS after gc.collect() once synced (the steady state), the process's peak RSS, the
   peak of the nft a rebuild streams to and that of `nft -f FILE` (both nft peaks measured from a
   small parent: see e2e.bench.probes.peak_rss_kib).
5. One-Service changes, `changes` times each on different Services: replace one endpoint address,
   add a Service with E endpoints, delete a Service; median and p95 latency of `proxier.sync()`
   and its operation count.

`python -m e2e.bench` takes the same flags as `nftproxy bench`, plus `--profile DIR` (cProfile
of the cold sync and of the changes, per count) and `--tracemalloc` (what the steady state holds,
by allocation site): both slow the run down and are for finding bottlenecks, not for figures.

The benchmark is part of the test bed, not of the agent's package: the DaemonSet's image holds the
agent only, and `nftproxy bench` runs this from a source checkout. By job:

- e2e.bench.workload: the Services and EndpointSlices (1, 2) and the one-Service changes (5);
- e2e.bench.coldstart: the cold start and the parse rate (1);
- e2e.bench.measure: the measuring process, inside the namespace (2-5);
- e2e.bench.probes: timing nft, peak RSS, percentiles, which namespace a process is in;
- e2e.bench.driver: outside: the namespace, the order of counts, the safety gates;
- e2e.bench.report: the summary lines, the text and Markdown tables, the targets;
- e2e.bench.api (`python -m e2e.bench.api`): network programming latency through the API;
- e2e.bench.lb (`python -m e2e.bench.lb`): LoadBalancer allocation against the API stand-in;
- e2e.bench.ops (`python -m e2e.bench.ops`): `nftproxy explain` and `nftproxy status` on a big node.
"""
