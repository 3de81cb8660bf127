"""What nftproxy last committed to the kernel, kept in memory so a sync never lists the kernel."""

from __future__ import annotations

from ..desired.elements import Chain
from .plan import Claims, Plan
from .rebuild import Rebuilt


class Committed:
    """Claims per element and references per chain, as of the last successful transaction.

    Mutated only by `apply`, after the kernel accepted the plan's transaction: if the transaction
    fails, this still describes what the kernel holds.
    """

    def __init__(self, rebuilt: Rebuilt | None = None) -> None:
        self.claims: Claims = rebuilt.claims if rebuilt else {}
        self.chains: dict[str, tuple[Chain, int]] = rebuilt.chains if rebuilt else {}

    def apply(self, plan: Plan) -> None:
        for (set_name, key), entry in plan.entry_updates.items():
            per_set = self.claims.setdefault(set_name, {})
            if entry is None:
                per_set.pop(key, None)
            else:
                per_set[key] = entry
        for name, value in plan.chain_updates.items():
            if value is None:
                self.chains.pop(name, None)
            else:
                self.chains[name] = value

    def element_counts(self) -> dict[str, int]:
        return {name: len(keys) for name, keys in self.claims.items()}
