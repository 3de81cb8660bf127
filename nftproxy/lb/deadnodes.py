"""Beyond kube-proxy (behind --lb-avoid-dead-node-endpoints, off by default): when the heartbeats say a
node is dead, stop sending new connections to endpoints on it from this node, until it returns.

Kubernetes needs ~40-50 s (node monitor grace period, then the EndpointSlice controller) to mark a dead
node's endpoints not ready; until then one connection in N goes to a black hole. The membership layer
knows within half a second. The proxier is not taught anything new: EndpointSlices pass through this
filter on their way to it, with the dead nodes' endpoints marked not ready and not serving, and are sent
again whenever the set of dead nodes changes.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

from ..agent.updates import Delete, Update, Upsert
from ..objects.model import ObjectRef
from ..objects.parse import object_ref


def without_dead(obj: Mapping[str, Any], dead: frozenset[str]) -> Mapping[str, Any]:
    """`obj` (an EndpointSlice) with endpoints on `dead` nodes not ready; `obj` itself when none is."""
    endpoints = obj.get("endpoints")
    if not dead or not isinstance(endpoints, list):
        return obj
    hit = [i for i, e in enumerate(endpoints) if isinstance(e, Mapping) and e.get("nodeName") in dead]
    if not hit:
        return obj
    out = dict(obj)
    out["endpoints"] = list(endpoints)
    for i in hit:
        endpoint = copy.deepcopy(endpoints[i])
        conditions = endpoint.get("conditions") if isinstance(endpoint.get("conditions"), dict) else {}
        endpoint["conditions"] = {**conditions, "ready": False, "serving": False}
        out["endpoints"][i] = endpoint
    return out


class DeadNodeFilter:
    """Holds the slices (as the API sent them) and the dead nodes; yields what the proxier should see."""

    def __init__(self) -> None:
        self.slices: dict[ObjectRef, Mapping[str, Any]] = {}
        self.dead: frozenset[str] = frozenset()

    def update(self, item: Update) -> Iterable[Update]:
        if isinstance(item, Upsert) and item.obj.get("kind") == "EndpointSlice":
            self.slices[object_ref(item.obj)] = item.obj
            return [Upsert(without_dead(item.obj, self.dead))]
        if isinstance(item, Delete) and item.kind == "EndpointSlice":
            self.slices.pop(ObjectRef(item.namespace or "default", item.name), None)
        return [item]

    def set_dead(self, dead: frozenset[str]) -> list[Update]:
        """New dead set: the slices whose view changes, to be sent again."""
        if dead == self.dead:
            return []
        changed = dead ^ self.dead
        self.dead = dead
        return [Upsert(without_dead(obj, dead)) for obj in self.slices.values()
                if any(isinstance(e, Mapping) and e.get("nodeName") in changed for e in obj.get("endpoints") or ())]
