"""A packet tracer over the FakeKernel: where would the kernel send this new connection?

The idea is upstream kube-proxy's `nftablesTracer` (pkg/proxy/nftables/helpers_test.go): walk a
packet through the rules in the fake and report the DNAT destinations, drop/reject and masquerade,
so that packet-path tests run in milliseconds without root. The kernel tests in tests/test_policies.py,
test_dataplane.py and test_dualstack.py stay the truth; this is the fast feedback.

Unlike upstream's regexps over known rule shapes, every rule is parsed into a small expression tree
when the tracer is built, and anything the grammar below does not know raises TracerError: when the
rules change, the tracer fails loudly instead of skipping a match it cannot read.

What it reads: only `kernel.sets` (set/map -> element key text -> (value text, comment)) and
`kernel.chains` (chain -> rule texts) of the fake, plus the skeleton text for the skeleton chains'
rules (the fake may hold them empty) and the base chains' `type ... hook ... priority ...` headers.

What it models (a NEW connection's first packet):
- hooks in order: prerouting (filter, then nat, by priority) -> routing (the DNAT destination is one
  of the node's addresses: input, else forward) -> input, or forward then nat postrouting; a packet
  the node sends: output (filter pre-DNAT, nat, filter) -> nat postrouting. Base chains of one hook
  run by priority; accept moves to the next, drop/reject end the packet, dnat/masquerade accept.
- matches: ip/ip6 saddr/daddr (an IPv4 selector never matches an IPv6 packet, as nft's implicit
  `meta nfproto` dependency), meta l4proto/nfproto/mark/priority, th dport, ct original
  ip/ip6 saddr/daddr and proto-dst (the tuple before DNAT), ct reply ip/ip6 saddr and proto-src
  (where the connection went: the destination after DNAT), ct state new (always true: new
  connections only), ct status dnat (true once this trace DNATed), fib saddr/daddr type local (the
  node's addresses and loopback), literals and CIDRs, anonymous sets, `@set` and `!= @set` over
  exact and interval elements (ipaddress ranges), concatenations with ` . `, `x & m == v`.
- statements: meta mark/priority set (`| ^ &`, `none`), `x map @m` (a miss ends the rule, as the
  kernel), vmap, jump/goto/return, accept/drop/reject, dnat ip/ip6 to addr . port (or `: port`),
  masquerade, `update @m { key timeout Ns : value }`.
- numgen random mod N: every value is followed, so a trace holds every path; the endpoints are the
  union over all slots, and `shares` gives each endpoint's probability (weights show as 3/4 vs 1/4).
- sessionAffinity: dynamic maps start empty (the fake holds no packet-path entries), so the steer rule
  misses: "no live entry". Each path records its `update`s; `Tracer.connect` commits one path's
  updates into the tracer's own overlay (never into the fake), so a later trace is steered by it,
  and `Tracer.advance(seconds)` lets entries time out. jhash (IPv6 affinity keys) is modelled as an
  opaque injective value: equal inputs give equal keys, never a real hash number.
Not modelled: conntrack beyond the first packet, reply direction, the loopback re-entry of a packet
the node sends to itself, routing beyond local-or-not, and anything outside table inet nftproxy.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from fractions import Fraction
from typing import Protocol, Union

from nftproxy.desired.skeleton import skeleton_text

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
Endpoint = tuple[str, int]


class TracerError(Exception):
    """Rule text or kernel state the tracer cannot evaluate: fix the tracer or the rules, never skip."""


class KernelView(Protocol):
    """The two views of FakeKernel the tracer relies on (its internals are not)."""

    sets: dict[str, dict[str, tuple[str | None, str | None]]]
    chains: dict[str, tuple[str, ...]]


# --- values -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClassId:
    """A tc handle as `meta priority` holds it (major:minor, hex)."""

    major: int
    minor: int

    @classmethod
    def parse(cls, text: str) -> ClassId:
        if text == "none":
            return cls(0, 0)
        major, sep, minor = text.partition(":")
        if not sep:
            raise TracerError(f"not a classid: {text!r}")
        return cls(int(major or "0", 16), int(minor or "0", 16))

    def __str__(self) -> str:
        return f"{self.major:x}:{self.minor:x}"


@dataclass(frozen=True)
class Opaque:
    """A jhash result: injective in its inputs, equal only to the same jhash of the same inputs."""

    text: str

    def __str__(self) -> str:
        return self.text


Scalar = Union[IPAddress, int, str, ClassId, Opaque]
Value = tuple[Scalar, ...]  # a concatenation (one component for a plain value)

PROTOCOLS = {"tcp": 6, "udp": 17, "sctp": 132}
_PROTOCOL_NAMES = {number: name for name, number in PROTOCOLS.items()}


def _proto_name(text: str) -> str:
    if text in PROTOCOLS:
        return text
    if text.isdigit() and int(text) in _PROTOCOL_NAMES:
        return _PROTOCOL_NAMES[int(text)]
    raise TracerError(f"unknown protocol {text!r}")


def _component_matches(value: Scalar, text: str) -> bool:
    """Does one element (or literal) component, as nft text, hold this value? (CIDRs and ranges too)"""
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        if "-" in text:
            low, high = (ipaddress.ip_address(t.strip()) for t in text.split("-", 1))
            return low.version == value.version and low <= value <= high  # type: ignore[operator]
        network = _network(text)
        return network.version == value.version and value in network
    if isinstance(value, bool):
        raise TracerError(f"boolean value compared with {text!r}")
    if isinstance(value, int):
        if "-" in text and not text.startswith("-"):
            low_text, high_text = text.split("-", 1)
            return int(low_text, 0) <= value <= int(high_text, 0)
        try:
            return int(text, 0) == value
        except ValueError as err:
            raise TracerError(f"not a number: {text!r}") from err
    if isinstance(value, ClassId):
        return ClassId.parse(text) == value
    if isinstance(value, Opaque):
        return text == value.text
    if value in PROTOCOLS:
        return _proto_name(text) == value
    return text == value


@lru_cache(maxsize=65536)
def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError as err:
        raise TracerError(f"not an address: {text!r}") from err


def _key_matches(value: Value, key: str) -> bool:
    parts = key.split(" . ")
    if len(parts) != len(value):
        raise TracerError(f"element {key!r} has {len(parts)} components, the rule looks up {len(value)}")
    return all(_component_matches(v, p.strip()) for v, p in zip(value, parts))


def format_value(value: Value) -> str:
    """A value as nft writes an element key: components joined by ' . '."""
    return " . ".join(str(v) for v in value)


def _parse_data(text: str) -> Value:
    """A map's data text (e.g. '10.1.0.5 . 8080', '4100:3', '2001:db8::5') as typed components."""
    out: list[Scalar] = []
    for part in text.split(" . "):
        part = part.strip()
        if part.isdigit():
            out.append(int(part))
        elif re.fullmatch(r"[0-9a-f]+:[0-9a-f]+", part) and part.count(":") == 1:
            out.append(ClassId.parse(part))
        else:
            try:
                out.append(ipaddress.ip_address(part))
            except ValueError:
                out.append(part)
    return tuple(out)


# --- packets and results --------------------------------------------------------------------------

@dataclass(frozen=True)
class Packet:
    """The first packet of a new connection."""

    source: str
    destination: str
    protocol: str  # tcp, udp or sctp
    port: int  # destination port

    def __post_init__(self) -> None:
        src, dst = ipaddress.ip_address(self.source), ipaddress.ip_address(self.destination)
        if src.version != dst.version:
            raise ValueError(f"{self.source} -> {self.destination}: mixed families")
        _proto_name(self.protocol)


@dataclass(frozen=True)
class Update:
    """An `update @map { key timeout Ns : data }` the packet path made."""

    map: str
    key: str
    timeout: int | None
    data: str | None


@dataclass(frozen=True)
class Path:
    """One outcome of a trace: the numgen values taken and what followed."""

    verdict: str  # accept, drop or reject
    endpoint: Endpoint | None  # the DNAT destination, None when not DNATed
    masquerade: bool
    probability: Fraction
    choices: tuple[int, ...]
    trail: tuple[str, ...]  # chains entered and rules matched, for messages
    updates: tuple[Update, ...]

    @property
    def output(self) -> str:
        """As upstream's tracer prints it: 'ip:port', '[ip6]:port', DROP, REJECT or ACCEPT."""
        if self.verdict != "accept":
            return self.verdict.upper()
        if self.endpoint is None:
            return "ACCEPT"
        address, port = self.endpoint
        return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


@dataclass(frozen=True, repr=False)
class Trace:
    """Every path of one packet; str() (and repr(), so that assertion messages show it) lists them."""

    packet: Packet
    hook: str
    paths: tuple[Path, ...]

    @property
    def verdict(self) -> str:
        """The verdict of every path, or 'mixed' when they differ."""
        verdicts = {p.verdict for p in self.paths}
        return verdicts.pop() if len(verdicts) == 1 else "mixed"

    @property
    def endpoints(self) -> frozenset[Endpoint]:
        return frozenset(p.endpoint for p in self.paths if p.verdict == "accept" and p.endpoint is not None)

    @property
    def addresses(self) -> frozenset[str]:
        return frozenset(address for address, _ in self.endpoints)

    @property
    def shares(self) -> dict[Endpoint | None, Fraction]:
        """Each accepted destination's probability (None: accepted without DNAT)."""
        out: dict[Endpoint | None, Fraction] = {}
        for p in self.paths:
            if p.verdict == "accept":
                out[p.endpoint] = out.get(p.endpoint, Fraction(0)) + p.probability
        return out

    @property
    def masquerade(self) -> bool:
        """Whether accepted connections are masqueraded; raises when paths differ (see masquerade_of)."""
        seen = {p.masquerade for p in self.paths if p.verdict == "accept"}
        if len(seen) != 1:
            raise AssertionError(f"masquerade differs between paths (or none accepted):\n{self}")
        return seen.pop()

    def masquerade_of(self, endpoint: Endpoint) -> bool:
        return any(p.masquerade for p in self.paths if p.endpoint == endpoint)

    @property
    def output(self) -> str:
        """Upstream-style summary: sorted distinct outputs joined by ', '."""
        return ", ".join(sorted({p.output for p in self.paths}))

    def path_to(self, endpoint: Endpoint) -> Path:
        for p in self.paths:
            if p.endpoint == endpoint and p.verdict == "accept":
                return p
        raise AssertionError(f"no path to {endpoint}:\n{self}")

    def __str__(self) -> str:
        pk = self.packet
        lines = [f"{pk.protocol} {pk.source} -> {pk.destination}:{pk.port} at {self.hook}: {self.output}"]
        for p in self.paths:
            lines.append(f"  path {list(p.choices)}: {p.output}{' (masquerade)' if p.masquerade else ''}")
            lines += [f"    {step}" for step in p.trail]
        return "\n".join(lines)

    __repr__ = __str__


# --- rule syntax ------------------------------------------------------------------------------------

_TOKEN = re.compile(r'"[^"]*"|[{},]|[^\s{},]+')


class _State:
    """One path's packet and metadata while it runs through the chains."""

    def __init__(self, packet: Packet, choices: tuple[int, ...], tracer: Tracer) -> None:
        self.tracer = tracer
        self.family = ipaddress.ip_address(packet.destination).version
        self.saddr: IPAddress = ipaddress.ip_address(packet.source)
        self.daddr: IPAddress = ipaddress.ip_address(packet.destination)
        self.dport = packet.port
        self.orig_saddr, self.orig_daddr, self.orig_dport = self.saddr, self.daddr, self.dport
        self.proto = _proto_name(packet.protocol)
        self.mark = 0
        self.priority = ClassId(0, 0)
        self.dnat: Endpoint | None = None
        self.masquerade = False
        self.choices = choices
        self.taken: list[int] = []
        self.moduli: list[int] = []
        self.probability = Fraction(1)
        self.trail: list[str] = []
        self.updates: list[Update] = []

    def numgen(self, modulus: int) -> int:
        index = len(self.taken)
        value = self.choices[index] if index < len(self.choices) else 0
        self.taken.append(value)
        self.moduli.append(modulus)
        self.probability /= modulus
        return value


class _NoMatch(Exception):
    """The expression has no value for this packet (a family mismatch, a map miss): the rule ends."""


Expr = Callable[[_State], Value]


@dataclass(frozen=True)
class _Verdict:
    kind: str  # accept drop reject return jump goto dnat masquerade
    chain: str | None = None


Statement = Callable[[_State], "bool | _Verdict"]  # True: go on; False: the rule does not match


@dataclass
class _Rule:
    text: str
    statements: list[Statement]


_SELECTOR_KINDS = {
    ("ip", "saddr"): "addr", ("ip", "daddr"): "addr", ("ip6", "saddr"): "addr", ("ip6", "daddr"): "addr",
    ("meta", "l4proto"): "proto", ("meta", "nfproto"): "nfproto", ("meta", "mark"): "int",
    ("meta", "priority"): "classid", ("th", "dport"): "int",
}
_VERDICT_WORDS = {"accept", "drop", "reject", "return"}


class _Parser:
    """Recursive descent over one rule's tokens; every unknown word raises TracerError."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _TOKEN.findall(text)
        self.i = 0

    def fail(self, what: str) -> TracerError:
        where = " ".join(self.tokens[self.i:self.i + 4]) or "end of rule"
        return TracerError(f"cannot parse rule {self.text!r}: {what} at {where!r}")

    def peek(self, ahead: int = 0) -> str | None:
        j = self.i + ahead
        return self.tokens[j] if j < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if token is None or (expected is not None and token != expected):
            raise self.fail(f"expected {expected or 'a word'}")
        self.i += 1
        return token

    def rule(self) -> _Rule:
        statements: list[Statement] = []
        while self.peek() is not None:
            if self.peek() == "comment":
                self.take()
                if not (self.peek() or "").startswith('"') or self.i + 1 != len(self.tokens):
                    raise self.fail("a comment must end the rule")
                self.take()
                break
            if statements and getattr(statements[-1], "terminal", False):
                raise self.fail("nothing but a comment may follow a verdict, dnat or masquerade")
            statements.append(self.statement())
        return _Rule(self.text, statements)

    # statements
    def statement(self) -> Statement:
        word = self.peek()
        if word in _VERDICT_WORDS:
            return _terminal(_constant(_Verdict(self.take())))
        if word in ("jump", "goto"):
            return _terminal(_constant(_Verdict(self.take(), self.take())))
        if word == "masquerade":
            self.take()
            while self.peek() in ("fully-random", "random", "persistent"):
                self.take()
            return _terminal(_masquerade)
        if word == "dnat":
            return _terminal(self.dnat())
        if word == "update":
            return self.update()
        if word == "fib":
            return self.fib()
        lhs, kind = self.expression()
        return self.relation(lhs, kind)

    def dnat(self) -> Statement:
        self.take("dnat")
        family = None
        if self.peek() in ("ip", "ip6"):
            family = 4 if self.take() == "ip" else 6
        self.take("to")
        target, _ = self.expression()
        port: Expr | None = None
        if self.peek() == ":":
            self.take()
            port, _ = self.expression()

        def run(st: _State) -> bool | _Verdict:
            if family is not None and family != st.family:
                return False
            value = target(st)
            if port is not None:
                value = value + port(st)
            if len(value) != 2 or not isinstance(value[0], (ipaddress.IPv4Address, ipaddress.IPv6Address)) \
                    or not isinstance(value[1], int) or isinstance(value[1], bool):
                raise TracerError(f"dnat to {format_value(value)!r}: expected address . port")
            if value[0].version != st.family:
                raise TracerError(f"dnat of an IPv{st.family} packet to {value[0]}")
            st.dnat = (str(value[0]), value[1])
            st.daddr, st.dport = value[0], value[1]
            return _Verdict("dnat")
        return run

    def update(self) -> Statement:
        self.take("update")
        name = self.set_name()
        self.take("{")
        key, _ = self.expression()
        timeout: int | None = None
        if self.peek() == "timeout":
            self.take()
            duration = self.take()
            m = re.fullmatch(r"(\d+)s", duration)
            if not m:
                raise self.fail("timeout in seconds (Ns)")
            timeout = int(m[1])
        data: Expr | None = None
        if self.peek() == ":":
            self.take()
            data, _ = self.expression()
        self.take("}")

        def run(st: _State) -> bool:
            k = format_value(key(st))
            d = format_value(data(st)) if data is not None else None
            st.updates.append(Update(name, k, timeout, d))
            st.trail.append(f"    update @{name} {{ {k} timeout {timeout}s : {d} }}")
            return True
        return run

    def fib(self) -> Statement:
        self.take("fib")
        which = self.take()
        if which not in ("saddr", "daddr"):
            raise self.fail("fib saddr or daddr")
        self.take("type")
        self.take("local")
        return lambda st: st.tracer.is_local(st.saddr if which == "saddr" else st.daddr)

    def set_name(self) -> str:
        token = self.take()
        if not token.startswith("@") or len(token) < 2:
            raise self.fail("a named set (@name)")
        return token[1:]

    def literal(self, kind: str) -> Callable[[Scalar], bool]:
        """A literal or anonymous set of the selector's kind, as a predicate."""
        if self.peek() == "{":
            self.take()
            items: list[str] = []
            while self.peek() != "}":
                items.append(self.take())
                if self.peek() == ",":
                    self.take()
            self.take("}")
        else:
            items = [self.take()]
        for item in items:
            self.check_literal(item, kind)
        return lambda v: any(_component_matches(v, item) for item in items)

    def check_literal(self, text: str, kind: str) -> None:
        ok = {
            "addr": lambda t: bool(ipaddress.ip_network(t, strict=False)),
            "proto": lambda t: bool(_proto_name(t)),
            "nfproto": lambda t: t in ("ipv4", "ipv6"),
            "int": lambda t: int(t, 0) >= 0,
            "classid": lambda t: bool(ClassId.parse(t)),
            "ctstate": lambda t: t == "new",
            "ctstatus": lambda t: t == "dnat",
        }.get(kind)
        try:
            good = ok is not None and ok(text)
        except (ValueError, TracerError):
            good = False
        if not good:
            raise self.fail(f"{text!r} is not a {kind} literal this tracer knows")

    def relation(self, lhs: Expr, kind: str) -> Statement:
        op = self.peek()
        if op == "set":
            return self.assignment(lhs, kind)
        if op == "vmap":
            self.take()
            name = self.set_name()
            return lambda st: _vmap(st, name, lhs(st))
        if op is not None and op.startswith("@"):
            name = self.set_name()
            return lambda st: st.tracer.lookup(name, lhs(st)) is not None
        if op == "!=" and (self.peek(1) or "").startswith("@"):
            self.take()
            name = self.set_name()
            return lambda st: st.tracer.lookup(name, lhs(st)) is None
        if op == "&":
            self.take()
            mask = self.int_literal()
            equal = self.take()
            if equal not in ("==", "!="):
                raise self.fail("== or != after a mask")
            wanted = self.int_literal()

            def masked(st: _State) -> bool:
                (value,) = lhs(st)
                if not isinstance(value, int):
                    raise TracerError(f"mask of a non-number {value!r}")
                return ((value & mask) == wanted) == (equal == "==")
            return masked
        negate = False
        if op in ("==", "!="):
            negate = self.take() == "!="
        if kind == "concat":
            raise self.fail("a concatenation compared with a literal")
        if op is None:
            raise self.fail("a match needs a value")
        predicate = self.literal(kind)
        return lambda st: predicate(lhs(st)[0]) != negate

    def int_literal(self) -> int:
        token = self.take()
        try:
            return int(token, 0)
        except ValueError:
            raise self.fail("a number") from None

    def assignment(self, lhs: Expr, kind: str) -> Statement:
        self.take("set")
        if kind not in ("int", "classid") or getattr(lhs, "target", None) is None:
            raise self.fail("only meta mark and meta priority can be set")
        target: str = lhs.target  # type: ignore[attr-defined]
        if self.peek() == "none":
            self.take()
            value: Expr = lambda st: (ClassId(0, 0),)  # noqa: E731
        else:
            value, _ = self.expression()
        if self.peek() in ("|", "^", "&"):
            op = self.take()
            operand = self.int_literal()
            base = value
            ops: dict[str, Callable[[int, int], int]] = {"|": int.__or__, "^": int.__xor__, "&": int.__and__}

            def combined(st: _State) -> Value:
                (v,) = base(st)
                if not isinstance(v, int):
                    raise TracerError(f"{op} on a non-number {v!r}")
                return (ops[op](v, operand),)
            value = combined

        def run(st: _State) -> bool:
            (v,) = value(st)
            if target == "mark":
                if not isinstance(v, int):
                    raise TracerError(f"meta mark set to {v!r}")
                st.mark = v
            else:
                if not isinstance(v, ClassId):
                    raise TracerError(f"meta priority set to {v!r}: not a classid")
                st.priority = v
            return True
        return run

    # expressions
    def expression(self) -> tuple[Expr, str]:
        """A concatenation, optionally looked up in a map (`x . y map @m`); returns it and its kind."""
        parts: list[tuple[Expr, str]] = [self.primary()]
        while self.peek() == ".":
            self.take()
            parts.append(self.primary())
        if len(parts) == 1:
            expr, kind = parts[0]
        else:
            exprs = [p for p, _ in parts]
            expr, kind = (lambda st: tuple(v for e in exprs for v in e(st))), "concat"
        if self.peek() == "map":
            self.take()
            name = self.set_name()
            key = expr

            def mapped(st: _State) -> Value:
                data = st.tracer.lookup(name, key(st))
                if data is None:
                    raise _NoMatch(f"{format_value(key(st))} not in @{name}")
                if not isinstance(data, str):
                    raise TracerError(f"@{name} is a set, not a map")
                return _parse_data(data)
            return mapped, "data"
        return expr, kind

    def primary(self) -> tuple[Expr, str]:
        word = self.take()
        if word in ("ip", "ip6", "meta", "th"):
            field_ = self.take()
            kind = _SELECTOR_KINDS.get((word, field_))
            if kind is None:
                self.i -= 1
                raise self.fail(f"unknown selector {word} {field_}")
            expr = _selector(word, field_)
            return expr, kind
        if word == "ct":
            return self.ct()
        if word == "numgen":
            self.take("random")
            self.take("mod")
            modulus = self.int_literal()
            if modulus < 1:
                raise self.fail("numgen modulus")
            return (lambda st: (st.numgen(modulus),)), "int"
        if word == "jhash":
            inner, _ = self.hash_input()
            self.take("mod")
            modulus = self.int_literal()
            seed = "0"
            if self.peek() == "seed":
                self.take()
                seed = self.take()

            def hashed(st: _State) -> Value:
                # no ' . ' inside: the key it joins is split on that
                inputs = ",".join(str(v) for v in inner(st))
                return (Opaque(f"jhash({inputs} mod {modulus} seed {seed})"),)
            return hashed, "opaque"
        self.i -= 1
        raise self.fail("unknown expression")

    def hash_input(self) -> tuple[Expr, str]:
        parts = [self.primary()]
        while self.peek() == ".":
            self.take()
            parts.append(self.primary())
        exprs = [p for p, _ in parts]
        return (lambda st: tuple(v for e in exprs for v in e(st))), "concat"

    def ct(self) -> tuple[Expr, str]:
        word = self.take()
        if word == "state":
            return (lambda st: ("new",)), "ctstate"
        if word == "status":
            return (lambda st: ("dnat",) if st.dnat is not None else ("none",)), "ctstatus"
        if word == "reply":
            return self.ct_reply()
        if word != "original":
            self.i -= 1
            raise self.fail("unknown ct expression")
        what = self.take()
        if what == "proto-dst":
            return (lambda st: (st.orig_dport,)), "int"
        if what in ("ip", "ip6") and self.peek() in ("saddr", "daddr"):
            family = 4 if what == "ip" else 6
            which = self.take()

            def original(st: _State) -> Value:
                if st.family != family:
                    raise _NoMatch(f"ct original {what} on IPv{st.family}")
                return (st.orig_saddr if which == "saddr" else st.orig_daddr,)
            return original, "addr"
        self.i -= 1
        raise self.fail("unknown ct original expression")

    def ct_reply(self) -> tuple[Expr, str]:
        """The reply tuple's source: where the connection went, i.e. the packet's destination once
        DNAT rewrote it (conntrack sets the reply tuple when the NAT binding is made)."""
        what = self.take()
        if what == "proto-src":
            return (lambda st: (st.dport,)), "int"
        if what in ("ip", "ip6") and self.peek() == "saddr":
            family = 4 if what == "ip" else 6
            self.take()

            def reply(st: _State) -> Value:
                if st.family != family:
                    raise _NoMatch(f"ct reply {what} saddr on IPv{st.family}")
                return (st.daddr,)
            return reply, "addr"
        self.i -= 1
        raise self.fail("unknown ct reply expression")


def _selector(word: str, field_: str) -> Expr:
    if word in ("ip", "ip6"):
        family = 4 if word == "ip" else 6

        def address(st: _State) -> Value:
            if st.family != family:
                raise _NoMatch(f"{word} {field_} on IPv{st.family}")
            return (st.saddr if field_ == "saddr" else st.daddr,)
        return address
    getters: dict[tuple[str, str], Callable[[_State], Scalar]] = {
        ("meta", "l4proto"): lambda st: st.proto,
        ("meta", "nfproto"): lambda st: f"ipv{st.family}",
        ("meta", "mark"): lambda st: st.mark,
        ("meta", "priority"): lambda st: st.priority,
        ("th", "dport"): lambda st: st.dport,
    }
    get = getters[(word, field_)]
    expr: Expr = lambda st: (get(st),)  # noqa: E731
    if word == "meta" and field_ in ("mark", "priority"):
        expr.target = field_  # type: ignore[attr-defined]
    return expr


def _constant(verdict: _Verdict) -> Statement:
    return lambda st: verdict


def _terminal(statement: Statement) -> Statement:
    """Marks a statement that ends its rule (the parser refuses anything after it)."""
    statement.terminal = True  # type: ignore[attr-defined]
    return statement


def _masquerade(st: _State) -> _Verdict:
    st.masquerade = True
    return _Verdict("masquerade")


def _vmap(st: _State, name: str, key: Value) -> bool | _Verdict:
    data = st.tracer.lookup(name, key)
    if data is None:
        return False
    if not isinstance(data, str):
        raise TracerError(f"@{name} is a set, not a verdict map")
    words = data.split()
    if len(words) == 1 and words[0] in ("accept", "drop", "reject", "return"):
        return _Verdict(words[0])
    if len(words) == 2 and words[0] in ("jump", "goto"):
        return _Verdict(words[0], words[1])
    raise TracerError(f"@{name} holds {data!r} for {format_value(key)}: not a verdict")


def parse_rule(text: str) -> _Rule:
    """Parse one rule (raises TracerError on anything unknown)."""
    return _Parser(text).rule()


# --- chains and hooks ---------------------------------------------------------------------------------

_PRIORITIES = {"raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50, "srcnat": 100}
_CHAIN_BLOCK = re.compile(r"^\s*chain\s+([\w-]+)\s*\{(.*?)^\s*\}", re.M | re.S)
_BASE_HEADER = re.compile(r"^type\s+(\w+)\s+hook\s+(\w+)\s+priority\s+([\w+-]+)\s*;\s*(?:policy\s+(\w+)\s*;)?$")


@dataclass(frozen=True)
class BaseChain:
    name: str
    type: str
    hook: str
    priority: int
    policy: str


def _priority(text: str) -> int:
    m = re.fullmatch(r"([a-z]+)?([+-]\d+)?|(-?\d+)", text)
    if not m:
        raise TracerError(f"unknown chain priority {text!r}")
    if m[3] is not None:
        return int(m[3])
    if m[1] is not None and m[1] not in _PRIORITIES:
        raise TracerError(f"unknown chain priority {text!r}")
    return _PRIORITIES.get(m[1] or "", 0) + int(m[2] or 0)


def parse_skeleton(text: str) -> tuple[dict[str, tuple[str, ...]], list[BaseChain]]:
    """The skeleton's chains (their rules) and base chains (hook, priority, policy)."""
    chains: dict[str, tuple[str, ...]] = {}
    bases: list[BaseChain] = []
    for name, body in _CHAIN_BLOCK.findall(text):
        rules: list[str] = []
        for line in body.splitlines():
            line = line.strip()
            if not line or line.startswith("#") or re.fullmatch(r'comment "[^"]*"', line):
                continue
            m = _BASE_HEADER.match(line)
            if m:
                bases.append(BaseChain(name, m[1], m[2], _priority(m[3]), m[4] or "accept"))
                continue
            if line.startswith("type "):
                raise TracerError(f"chain {name}: unknown base chain header {line!r}")
            rules.append(line)
        chains[name] = tuple(rules)
    if not bases:
        raise TracerError("the skeleton declares no base chains")
    return chains, bases


_MAX_DEPTH = 32
_MAX_STEPS = 100_000


class Tracer:
    """Traces packets through a FakeKernel's nftproxy table as one node sees them."""

    def __init__(self, kernel: KernelView, local_addresses: Iterable[str], skeleton: str | None = None) -> None:
        if not kernel.sets:  # the skeleton's sets are there from the first sync on (dynamic chains may not be)
            raise TracerError("the kernel holds no table: sync the Proxier first")
        self.kernel = kernel
        self.local = frozenset(ipaddress.ip_address(a) for a in local_addresses)
        skeleton_chains, self.bases = parse_skeleton(skeleton if skeleton is not None else skeleton_text())
        texts = dict(skeleton_chains)
        for name, rules in kernel.chains.items():
            if rules or name not in texts:
                texts[name] = rules
        self.rules: dict[str, list[_Rule]] = {}
        for name, rules in texts.items():
            try:
                self.rules[name] = [parse_rule(r) for r in rules]
            except TracerError as err:
                raise TracerError(f"chain {name}: {err}") from None
        for base in self.bases:
            if base.hook not in ("prerouting", "input", "forward", "output", "postrouting"):
                raise TracerError(f"base chain {base.name}: hook {base.hook} is not modelled")
            if base.type not in ("nat", "filter"):
                raise TracerError(f"base chain {base.name}: type {base.type} is not modelled")
        # entries the packet path added (sessionAffinity), with their expiry; never written to the fake
        self.dynamic: dict[str, dict[str, tuple[str | None, float]]] = {}
        self.now = 0.0

    # state the rules read
    def is_local(self, address: IPAddress) -> bool:
        return address in self.local or address.is_loopback

    def lookup(self, name: str, key: Value) -> str | bool | None:
        """The data of the first element of @name that holds key; True for a set element; None: a miss."""
        elements = self.kernel.sets.get(name)
        if elements is None:
            raise TracerError(f"rule refers to @{name}, which the kernel does not hold")
        exact = elements.get(format_value(key))  # the same text always matches: a shortcut, not a rule
        if exact is not None:
            return exact[0] if exact[0] is not None else True
        for text, (data, _) in elements.items():
            if _key_matches(key, text):
                return data if data is not None else True
        for text, (data, expires) in self.dynamic.get(name, {}).items():
            if expires > self.now and _key_matches(key, text):
                return data if data is not None else True
        return None

    # time and affinity
    def advance(self, seconds: float) -> None:
        """Let time pass: dynamic entries whose timeout ran out no longer match."""
        self.now += seconds

    def commit(self, path: Path) -> None:
        """Keep a path's updates, as the kernel would once its connection went through."""
        for update in path.updates:
            entries = self.dynamic.setdefault(update.map, {})
            expires = self.now + (update.timeout if update.timeout is not None else float("inf"))
            old = entries.get(update.key)
            if old is not None and old[1] > self.now:
                entries[update.key] = (old[0], expires)  # update refreshes the timeout, keeps the data
            else:
                entries[update.key] = (update.data, expires)

    def connect(self, packet: Packet, hook: str = "prerouting", endpoint: Endpoint | None = None) -> Path:
        """A connection that went through: trace it, take the path to `endpoint` (or the only
        path) and commit its affinity updates. Returns that path."""
        trace = self.trace(packet, hook)
        if endpoint is not None:
            path = trace.path_to(endpoint)
        elif len({(p.verdict, p.endpoint) for p in trace.paths}) == 1:
            path = trace.paths[0]
        else:
            raise AssertionError(f"several outcomes, name the endpoint:\n{trace}")
        self.commit(path)
        return path

    # the walk
    def trace(self, packet: Packet, hook: str = "prerouting") -> Trace:
        """Every path the packet can take from `hook`: prerouting (from a pod or outside) or output
        (sent by the node itself)."""
        if hook not in ("prerouting", "output"):
            raise ValueError(f"hook {hook!r}: prerouting or output")
        paths: list[Path] = []
        pending: list[tuple[int, ...]] = [()]
        while pending:
            prefix = pending.pop()
            st = _State(packet, prefix, self)
            verdict = self._walk(st, hook)
            # every other value of each numgen this run reached beyond the prefix is another path
            for index in range(len(prefix), len(st.moduli)):
                for value in range(1, st.moduli[index]):
                    pending.append((*st.taken[:index], value))
            paths.append(Path(verdict, st.dnat, st.masquerade, st.probability, tuple(st.taken),
                              tuple(st.trail), tuple(st.updates)))
            if len(paths) > 10000:
                raise TracerError("more than 10000 paths")
        paths.sort(key=lambda p: p.choices)
        return Trace(packet, hook, tuple(paths))

    def _walk(self, st: _State, hook: str) -> str:
        verdict = self._hook(st, hook)
        if verdict != "accept":
            return verdict
        local = self.is_local(st.daddr)
        st.trail.append(f"routing: {st.daddr} is {'local: input' if local else 'not local'}")
        if hook == "prerouting":
            following = ["input"] if local else ["forward", "postrouting"]
        else:
            following = ["postrouting"]
        for current in following:
            verdict = self._hook(st, current)
            if verdict != "accept":
                return verdict
        return "accept"

    def _hook(self, st: _State, hook: str) -> str:
        """The base chains of one hook by priority: accept goes on, drop and reject end the packet."""
        for base in sorted((b for b in self.bases if b.hook == hook), key=lambda b: b.priority):
            st.trail.append(f"{hook} {base.type} priority {base.priority}: {base.name}")
            verdict = self._chain(st, base.name, base.policy)
            if verdict != "accept":
                return verdict
        return "accept"

    def _chain(self, st: _State, base: str, policy: str) -> str:
        """Run a base chain with jump/goto/return; the base chain's verdict (accept drop reject)."""
        stack: list[tuple[str, int]] = []
        chain, index = base, 0
        for _ in range(_MAX_STEPS):
            rules = self.rules.get(chain)
            if rules is None:
                raise TracerError(f"jump or goto to chain {chain}, which the kernel does not hold")
            if index >= len(rules):
                if not stack:
                    return policy
                chain, index = stack.pop()
                continue
            rule = rules[index]
            index += 1
            outcome = self._rule(st, chain, rule)
            if outcome is None:
                continue
            if outcome.kind == "return":
                if not stack:
                    return policy
                chain, index = stack.pop()
            elif outcome.kind in ("jump", "goto"):
                assert outcome.chain is not None
                if outcome.kind == "jump":
                    stack.append((chain, index))
                if len(stack) > _MAX_DEPTH:
                    raise TracerError(f"jumps deeper than {_MAX_DEPTH}: a loop?")
                st.trail.append(f"    -> {outcome.kind} {outcome.chain}")
                chain, index = outcome.chain, 0
            elif outcome.kind in ("dnat", "masquerade", "accept"):
                return "accept"
            else:
                return outcome.kind
        raise TracerError(f"more than {_MAX_STEPS} rules from {base}: a loop?")

    def _rule(self, st: _State, chain: str, rule: _Rule) -> _Verdict | None:
        """Run one rule: its verdict, or None when it did not match or ended without one."""
        try:
            for statement in rule.statements:
                result = statement(st)
                if result is False:
                    return None
                if isinstance(result, _Verdict):
                    st.trail.append(f"  {chain}: {rule.text}")
                    return result
        except _NoMatch:
            # statements before the miss keep their effect, as in the kernel
            return None
        st.trail.append(f"  {chain}: {rule.text}")
        return None


def trace(kernel: KernelView, local_addresses: Iterable[str], source: str, destination: str, protocol: str,
          port: int, hook: str = "prerouting") -> Trace:
    """One-shot convenience: a Tracer for this kernel and node, one packet."""
    return Tracer(kernel, local_addresses).trace(Packet(source, destination, protocol, port), hook)


__all__ = ["BaseChain", "ClassId", "Packet", "Path", "Trace", "Tracer", "TracerError", "Update", "format_value",
           "parse_rule", "parse_skeleton", "trace"]
