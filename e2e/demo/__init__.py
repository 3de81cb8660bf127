"""`nftproxy demo`: every kind of Service, with real packets, on a throw-away cluster of network namespaces.

What it does, step by step (each step prints what it did):

1. builds a two-node cluster out of network namespaces with the e2e/netns harness (a LAN, two nodes, three
   pods serving HTTP that answer with their name and the client address they saw, a pod that only
   sends requests, and a machine on the LAN outside the cluster);
2. writes a ClusterIP, a NodePort, an externalIPs and a LoadBalancer Service with their EndpointSlices
   as manifests and starts `nftproxy run --manifests DIR` in every node's namespace;
3. sends requests through each Service and shows where they landed and which source address the pods
   saw, checking both against what Kubernetes promises;
4. prints the interesting part of the ruleset of one node;
5. removes everything it created: agents, namespaces, temporary directories (also on Ctrl-C, SIGTERM
   and errors). With `--keep` the cluster stays up until Ctrl-C, with commands to poke at it.

The work happens in a worker process of its own session (`python -m e2e.demo --worker`), so that
a Ctrl-C at the terminal reaches only `nftproxy demo`, which passes it on once: see
e2e.demo.launcher.run_demo.

Everything happens inside namespaces the harness creates (`nfp-<id>-*`); the host's own network
namespace is never touched and traffic only flows between the demo's namespaces (RFC 2544 addresses,
198.18.0.0/15).

Exit status: 0 when traffic went where expected, 1 when it did not (or the demo broke half-way),
2 when the demo cannot run here (not root, no nft, no network namespaces), 130 on Ctrl-C.

The demo is part of the test bed, not of the agent's package: `nftproxy demo` (and `bash e2e/bootstrap.sh
demo`) runs it from a source checkout. By job:

- e2e.demo.launcher: `nftproxy demo` itself, the worker process in its own session, signals passed on;
- e2e.demo.steps: the five steps in order, the summary, `--keep`, the teardown;
- e2e.demo.services: the example Services and their addresses;
- e2e.demo.traffic: the requests through each Service, what they must show, and how it is shown;
- e2e.demo.ruleset: the excerpt of the ruleset (step 4);
- e2e.demo.terminal: colour, Unicode and wrapping where the terminal takes them;
- e2e.demo.signals: exit statuses, and signals held while the harness creates something.
"""
