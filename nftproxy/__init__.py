"""nftproxy: Kubernetes Services as nftables maps, kept in step by atomic diffs.

The package reads top to bottom as the data flows:
``objects`` (API objects in) -> ``desired`` (the rules this node must hold) -> ``diff`` (what changes)
-> ``transaction`` (one nft script) -> ``kernel`` (libnftables or a child ``nft -f``).
``agent`` is the imperative shell that watches, keeps state and drives a sync.
"""

__version__ = "0.1.0"
