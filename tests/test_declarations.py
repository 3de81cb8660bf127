"""The sets and maps declared in code (nftproxy/desired/sets.py) are the ones rules/nftproxy.nft declares.

The skeleton is what the kernel loads and what a reader of `nft list ruleset` sees; the code's
declarations are what translation, the diff and the fake rely on. A set added, renamed or retyped
in one and not the other fails here, not in a packet test.
"""

from __future__ import annotations

import re

import pytest

from nftproxy.desired.elements import SetDecl
from nftproxy.desired.sets import is_shared, skeleton_sets
from nftproxy.desired.skeleton import FAMILY, TABLE, skeleton_text
from nftproxy.transaction.block import table_block


def _statements(declaration: str) -> list[str]:
    """`map NAME { type a : b ; flags x ; comment "..." }` -> ["type a : b", "flags x", ...] (comments dropped)."""
    body = declaration.split("{", 1)[1]
    body = re.sub(r'comment\s+"[^"]*"', "", body)
    body = re.sub(r"elements\s*=\s*\{[^}]*\}", "", body)
    return [s.strip() for s in re.split(r"[;\n]", body) if s.strip()]


def read_skeleton(text: str) -> dict[str, SetDecl]:
    """The skeleton's sets and maps as SetDecls (without comments)."""
    found: dict[str, SetDecl] = {}
    for name, declaration in table_block(text, FAMILY, TABLE).declarations.items():
        key, value, typeof, flags, size = "", None, False, (), None
        for statement in _statements(declaration):
            word, _, rest = statement.partition(" ")
            if word in ("type", "typeof"):
                typeof = word == "typeof"
                key, _, value_text = rest.partition(" : ")
                value = value_text or None
            elif word == "flags":
                flags = tuple(f.strip() for f in rest.split(","))
            elif word == "size":
                size = int(rest)
            else:
                raise AssertionError(f"{name}: unexpected statement {statement!r}")
        found[name] = SetDecl(name, key, value, typeof, flags, size)
    return found


def test_code_and_skeleton_declare_the_same_sets() -> None:
    in_code, in_skeleton = skeleton_sets(), read_skeleton(skeleton_text())
    assert sorted(in_code) == sorted(in_skeleton), "set names differ between sets.py and rules/nftproxy.nft"
    for name, decl in in_code.items():
        assert decl == in_skeleton[name], f"{name}: sets.py and rules/nftproxy.nft disagree"


def test_only_hairpin_sets_are_shared() -> None:
    assert sorted(name for name in skeleton_sets() if is_shared(name)) == ["hairpin-v4", "hairpin-v6"]


@pytest.mark.parametrize("old, new", [
    ("set cluster-ips-v4 { type ipv4_addr;", "set cluster-ips-v4 { type ipv6_addr;"),
    ("flags dynamic,timeout; size 1048576", "flags dynamic,timeout; size 65536"),
    ("set firewall-allow-v6 { type ipv6_addr . inet_proto . inet_service . ipv6_addr; flags interval;",
     "set firewall-allow-v6 { type ipv6_addr . inet_proto . inet_service . ipv6_addr;"),
])
def test_a_skeleton_that_drifted_from_the_code_is_caught(old: str, new: str) -> None:
    changed = skeleton_text().replace(old, new, 1)
    assert changed != skeleton_text()
    assert read_skeleton(changed) != skeleton_sets()
