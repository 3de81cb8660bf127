"""Which address each LoadBalancer Service gets: pools, requested addresses and sharing, as MetalLB decides.

Pure state, no API calls: the controller feeds it pools and requests and writes what it answers.
Free addresses come from a per-pool, per-family cursor plus a heap of released addresses, so an
allocation costs O(log n) whatever the pool's size, never a scan of the pool per Service (MetalLB
walks the pool from its first address for every Service).

Rules (MetalLB's):
- A Service keeps the address it holds while that address is still valid for it.
- A requested address must lie in a pool that may serve the Service (spec.serviceAllocation), and be
  free or shareable: the same sharing key, the same backend key (eTP Local: identical selectors), and
  no (protocol, port) used twice.
- Otherwise: pools whose serviceAllocation selects the Service, by priority (lower first), then pools
  without serviceAllocation; only `autoAssign` pools unless the Service names its pool. A Service with
  a sharing key first joins an address its key already holds. A dual-stack Service gets one address per
  family from one pool.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace

from ..objects.model import ObjectRef
from .model import AddressPool, Family, LBRequest, PortUse, address_text, address_value, is_buggy

Address = tuple[Family, int]
FAMILIES: tuple[Family, ...] = (4, 6)


def _address(ip: str) -> Address:
    value, family = address_value(ip)
    return family, value


@dataclass(frozen=True, slots=True)
class Assigned:
    ips: tuple[str, ...]  # in the Service's family order
    pool: str


@dataclass(frozen=True, slots=True)
class Refused:
    reason: str  # for the Warning Event: says what to change


Outcome = Assigned | Refused


class _FreeList:
    """Lowest free address of one family in one pool: a cursor over never-used addresses, and a heap
    of addresses released behind it. `is_free` is asked lazily, so addresses claimed elsewhere
    (requested, restored, shared) are skipped without bookkeeping here."""

    def __init__(self, pool: AddressPool, family: Family) -> None:
        self.ranges = [r for r in sorted(pool.ranges, key=lambda r: r.first) if r.family == family]
        self.family = family
        self.avoid_buggy = pool.avoid_buggy_ips
        self.starts: list[int] = []  # offset of each range's first address
        total = 0
        for r in self.ranges:
            self.starts.append(total)
            total += r.size
        self.total = total
        self.cursor = 0
        self.heap: list[int] = []
        self.in_heap: set[int] = set()

    def _value_at(self, offset: int) -> int:
        i = bisect.bisect_right(self.starts, offset) - 1
        return self.ranges[i].first + offset - self.starts[i]

    def _behind_cursor(self, value: int) -> bool:
        return self.cursor >= self.total or value < self._value_at(self.cursor)

    def take(self, in_use: Mapping[Address, object]) -> int | None:
        """The lowest address that is not a key of `in_use`, or None when the pool is full."""
        while self.heap:
            value = heapq.heappop(self.heap)
            self.in_heap.discard(value)
            if (self.family, value) not in in_use:
                return value
        while self.cursor < self.total:
            value = self._value_at(self.cursor)
            self.cursor += 1
            if self.avoid_buggy and is_buggy(value, self.family):
                continue
            if (self.family, value) not in in_use:
                return value
        return None

    def give_back(self, value: int) -> None:
        if self._behind_cursor(value) and value not in self.in_heap:
            heapq.heappush(self.heap, value)
            self.in_heap.add(value)

    def capacity(self) -> int:
        if not self.avoid_buggy or self.family != 4:
            return self.total
        return self.total - sum(_buggy_count(r.first, r.last) for r in self.ranges)


def _buggy_count(first: int, last: int) -> int:
    """How many addresses ending in .0 or .255 lie in [first, last]."""
    def upto(n: int, residue: int) -> int:  # count of x in [0, n] with x % 256 == residue
        return 0 if n < residue else (n - residue) // 256 + 1
    return sum(upto(last, res) - upto(first - 1, res) for res in (0, 255))


@dataclass(slots=True)
class _Use:
    """Who holds one address, and under which sharing terms."""

    sharing_key: str | None
    backend_key: str
    pool: str
    ports: dict[PortUse, ObjectRef] = field(default_factory=dict)
    services: set[ObjectRef] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class _Held:
    request: LBRequest
    addresses: tuple[Address, ...]
    pool: str


class Allocator:
    def __init__(self, pools: Iterable[AddressPool] = ()) -> None:
        self.pools: dict[str, AddressPool] = {}
        self._free: dict[tuple[str, Family], _FreeList] = {}
        self._uses: dict[Address, _Use] = {}
        self._held: dict[ObjectRef, _Held] = {}
        self._by_key: dict[str, set[Address]] = {}
        self.set_pools(pools)

    # --- pools ----------------------------------------------------------------------------------
    def set_pools(self, pools: Iterable[AddressPool]) -> list[ObjectRef]:
        """Replace the pools; returns the Services whose addresses no longer fit (to be allocated anew)."""
        new = {p.name: p for p in pools}
        for name, pool in new.items():
            if self.pools.get(name) != pool:
                for family in FAMILIES:
                    self._free[(name, family)] = _FreeList(pool, family)
        for name in self.pools.keys() - new.keys():
            for family in FAMILIES:
                self._free.pop((name, family), None)
        self.pools = new
        return [ref for ref, held in self._held.items() if not self._fits(held)]

    def _fits(self, held: _Held) -> bool:
        pool = self.pools.get(held.pool)
        return pool is not None and all(pool.contains(address_text(v, f)) for f, v in held.addresses)

    # --- queries --------------------------------------------------------------------------------
    def assigned(self, ref: ObjectRef) -> Assigned | None:
        held = self._held.get(ref)
        if held is None:
            return None
        return Assigned(tuple(address_text(v, f) for f, v in held.addresses), held.pool)

    def holders(self, address: str) -> frozenset[ObjectRef]:
        use = self._uses.get(_address(address))
        return frozenset(use.services) if use else frozenset()

    def pool_usage(self) -> dict[str, tuple[int, int]]:
        """pool -> (addresses in use, capacity), for metrics and the pools' status."""
        used: dict[str, int] = {name: 0 for name in self.pools}
        for use in self._uses.values():
            if use.pool in used:
                used[use.pool] += 1
        return {name: (used[name], sum(self._free[(name, f)].capacity() for f in FAMILIES))
                for name in self.pools}

    # --- decisions ------------------------------------------------------------------------------
    def allocate(self, request: LBRequest, namespace_labels: Mapping[str, str] | None = None) -> Outcome:
        """Keep, claim or pick addresses for `request`; the Service holds nothing new when Refused."""
        labels = namespace_labels or {}
        held = self._held.get(request.ref)
        if held is not None:
            if self._still_valid(held, request, labels):
                self._release(request.ref)
                self._claim(request, held.addresses, held.pool)
                return self.assigned(request.ref)  # type: ignore[return-value]  # just claimed: not None
            self._release(request.ref)
        if request.requested:
            return self._claim_requested(request, labels)
        return self._pick(request, labels)

    def restore(self, request: LBRequest, ips: tuple[str, ...], namespace_labels: Mapping[str, str] | None = None,
                ) -> Outcome:
        """After a restart: take back what the Service's status says it has, if that is still valid."""
        if request.requested and set(request.requested) != set(ips):
            return self.allocate(request, namespace_labels)
        outcome = self._claim_requested(replace(request, requested=ips), namespace_labels or {})
        if isinstance(outcome, Refused):
            return self.allocate(request, namespace_labels)
        return outcome

    def release(self, ref: ObjectRef) -> None:
        self._release(ref)

    # --- internals ------------------------------------------------------------------------------
    def _still_valid(self, held: _Held, request: LBRequest, labels: Mapping[str, str]) -> bool:
        pool = self.pools.get(held.pool)
        if pool is None or not self._fits(held):
            return False
        if tuple(f for f, _ in held.addresses) != request.families:
            return False
        if request.pool is not None and request.pool != held.pool:
            return False
        if request.requested and set(request.requested) != {address_text(v, f) for f, v in held.addresses}:
            return False
        if not pool.serves(request.ref.namespace, labels, dict(request.labels)):
            return False
        return all(self._conflict(a, request) is None for a in held.addresses)

    def _conflict(self, address: Address, request: LBRequest) -> str | None:
        """Why `request` cannot use `address` next to its other holders (None: it can)."""
        use = self._uses.get(address)
        if use is None:
            return None
        others = use.services - {request.ref}
        if not others:
            return None
        text = address_text(address[1], address[0])
        holder = min(others, key=str)
        if use.sharing_key is None or request.sharing_key is None:
            return f"{text} is taken by {holder} (sharing needs the same allow-shared-ip key on both)"
        if use.sharing_key != request.sharing_key:
            return f"{text} is taken by {holder} with another sharing key ({use.sharing_key!r})"
        if use.backend_key != request.backend_key:
            return (f"{text} is shared by {holder}; with externalTrafficPolicy Local, Services share an address "
                    f"only when their selectors are identical")
        for port in request.ports:
            owner = use.ports.get(port)
            if owner is not None and owner != request.ref:
                return f"port {port} on {text} is already used by {owner}"
        return None

    def _claim(self, request: LBRequest, addresses: tuple[Address, ...], pool: str) -> None:
        for address in addresses:
            use = self._uses.get(address)
            if use is None:
                use = self._uses[address] = _Use(request.sharing_key, request.backend_key, pool)
            use.services.add(request.ref)
            for port in request.ports:
                use.ports[port] = request.ref
            if request.sharing_key is not None:
                self._by_key.setdefault(request.sharing_key, set()).add(address)
        self._held[request.ref] = _Held(request, addresses, pool)

    def _release(self, ref: ObjectRef) -> None:
        held = self._held.pop(ref, None)
        if held is None:
            return
        for address in held.addresses:
            use = self._uses.get(address)
            if use is None:
                continue
            use.services.discard(ref)
            for port in [p for p, owner in use.ports.items() if owner == ref]:
                del use.ports[port]
            if use.services:
                continue
            del self._uses[address]
            if use.sharing_key is not None:
                keyed = self._by_key.get(use.sharing_key)
                if keyed is not None:
                    keyed.discard(address)
                    if not keyed:
                        del self._by_key[use.sharing_key]
            free = self._free.get((use.pool, address[0]))
            if free is not None:
                free.give_back(address[1])

    def _claim_requested(self, request: LBRequest, labels: Mapping[str, str]) -> Outcome:
        addresses: list[Address] = []
        pool_name = ""
        for ip in request.requested:
            pool = self._pool_for(ip, request, labels)
            if isinstance(pool, Refused):
                return pool
            address = _address(ip)
            why = self._conflict(address, request)
            if why is not None:
                return Refused(why)
            addresses.append(address)
            pool_name = pool_name or pool.name
        ordered = tuple(sorted(addresses, key=lambda a: request.families.index(a[0])))
        self._claim(request, ordered, pool_name)
        return self.assigned(request.ref)  # type: ignore[return-value]  # just claimed: not None

    def _pool_for(self, ip: str, request: LBRequest, labels: Mapping[str, str]) -> AddressPool | Refused:
        holding = [p for p in self.pools.values() if p.contains(ip)]
        if not holding:
            return Refused(f"requested address {ip} is outside every IPAddressPool")
        if request.pool is not None:
            holding = [p for p in holding if p.name == request.pool]
            if not holding:
                return Refused(f"requested address {ip} is not in pool {request.pool!r} named by the Service")
        serving = [p for p in holding if p.serves(request.ref.namespace, labels, dict(request.labels))]
        if not serving:
            return Refused(f"requested address {ip} is in pool {holding[0].name!r}, whose serviceAllocation "
                           f"excludes this Service")
        return min(serving, key=lambda p: p.name)

    def _candidates(self, request: LBRequest, labels: Mapping[str, str]) -> tuple[list[AddressPool], list[str]]:
        """Pools to try, in order, and why the others were passed over."""
        passed: list[str] = []
        chosen: list[AddressPool] = []
        wanted = set(request.families)
        for pool in self.pools.values():
            if request.pool is not None and pool.name != request.pool:
                continue
            if request.pool is None and not pool.auto_assign:
                passed.append(f"{pool.name} (autoAssign false)")
            elif not pool.serves(request.ref.namespace, labels, dict(request.labels)):
                passed.append(f"{pool.name} (serviceAllocation excludes this Service)")
            elif not wanted <= pool.families():
                passed.append(f"{pool.name} (no {'/'.join(f'IPv{f}' for f in sorted(wanted - pool.families()))})")
            else:
                chosen.append(pool)
        chosen.sort(key=lambda p: (not p.restricted, p.priority if p.priority is not None else 1 << 31, p.name))
        return chosen, passed

    def _pick(self, request: LBRequest, labels: Mapping[str, str]) -> Outcome:
        if request.pool is not None and request.pool not in self.pools:
            return Refused(f"pool {request.pool!r} named by the Service does not exist")
        pools, passed = self._candidates(request, labels)
        if not pools:
            detail = f": {', '.join(passed)}" if passed else ""
            return Refused(f"no IPAddressPool may serve this Service{detail}")
        for pool in pools:
            found = self._pick_in(pool, request)
            if found is not None:
                self._claim(request, found, pool.name)
                return self.assigned(request.ref)  # type: ignore[return-value]  # just claimed: not None
        names = ", ".join(repr(p.name) for p in pools)
        families = "/".join(f"IPv{f}" for f in request.families)
        return Refused(f"no free {families} address in pool {names}" if len(pools) == 1
                       else f"no free {families} address in pools {names}")

    def _pick_in(self, pool: AddressPool, request: LBRequest) -> tuple[Address, ...] | None:
        found: list[Address] = []
        taken: list[Address] = []
        for family in request.families:
            shared = self._shareable(pool, family, request)
            if shared is not None:
                found.append(shared)
                continue
            value = self._free[(pool.name, family)].take(self._uses)
            if value is None:
                for f, v in taken:
                    self._free[(pool.name, f)].give_back(v)
                return None
            taken.append((family, value))
            found.append((family, value))
        return tuple(found)

    def _shareable(self, pool: AddressPool, family: Family, request: LBRequest) -> Address | None:
        if request.sharing_key is None:
            return None
        for address in sorted(self._by_key.get(request.sharing_key, ())):
            use = self._uses[address]
            if address[0] == family and use.pool == pool.name and self._conflict(address, request) is None:
                return address
        return None

    def held(self) -> Iterator[ObjectRef]:
        return iter(list(self._held))
