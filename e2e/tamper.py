"""Tamper with the agent's table as an operator might, and time how long until the agent restored it.

Run inside the agent's network namespace (`ip netns exec NS python -m e2e.tamper element|flush`); prints
one JSON line: what was done, and `restored_ms` from the tampering's commit (made through libnftables in
this process, so it is done when the call returns) to the first later ruleset generation at which the
table held again what it held before. The generation is polled every millisecond over netlink (cheap);
the table is read with `nft -j` only when it moved.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

from nftproxy.ops.netlink import NetlinkReader

TABLE = ("inet", "nftproxy")


def nft_json(*args: str) -> list[dict[str, Any]]:
    proc = subprocess.run(["nft", "-j", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        return []
    return json.loads(proc.stdout).get("nftables", [])


def element_counts() -> dict[str, int]:
    """Elements per set and map of the table (empty when the table is gone)."""
    out: dict[str, int] = {}
    for item in nft_json("list", "table", *TABLE):
        for kind in ("set", "map"):
            if kind in item:
                out[item[kind]["name"]] = len(item[kind].get("elem", []))
    return out


def key_text(elem: Any) -> str:
    """An nft -j element key as nft's text syntax (`198.19.0.10 . tcp . 80`)."""
    if isinstance(elem, dict) and "elem" in elem:
        elem = elem["elem"]["val"]
    if isinstance(elem, dict) and "concat" in elem:
        return " . ".join(str(part) for part in elem["concat"])
    return str(elem)


def first_key(map_name: str) -> str:
    for item in nft_json("list", "map", *TABLE, map_name):
        if "map" in item and item["map"].get("elem"):
            entry = item["map"]["elem"][0]
            return key_text(entry[0] if isinstance(entry, list) else entry)
    raise SystemExit(f"map {map_name} is empty: nothing to delete")


def has_key(map_name: str, key: str) -> bool:
    for item in nft_json("list", "map", *TABLE, map_name):
        if "map" in item:
            return any(key_text(e[0] if isinstance(e, list) else e) == key for e in item["map"].get("elem", []))
    return False


def tamper_and_wait(command: str, check: Any, timeout: float) -> float | None:
    """Run `command` through libnftables in this process (its commit is done when the call returns),
    then the seconds until `check()` holds, tested at each later ruleset generation (None: timeout)."""
    import nftables

    lib = nftables.Nftables()
    with NetlinkReader() as reader:
        seen = reader.generation()
        rc, _out, err = lib.cmd(command)
        started = time.monotonic()
        if rc != 0:
            raise SystemExit(f"{command!r} failed: {err}")
        seen += 1  # the tampering's own commit
        while time.monotonic() - started < timeout:
            gen = reader.generation()
            if gen != seen:
                seen = gen
                at = time.monotonic()
                if check():
                    return at - started
            time.sleep(0.001)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.tamper", description=__doc__)
    parser.add_argument("what", choices=("element", "flush"))
    parser.add_argument("--map", default="service-ips-v4", help="for element: the map to delete one element from")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    if args.what == "element":
        key = first_key(args.map)
        command = f"delete element {' '.join(TABLE)} {args.map} {{ {key} }}"
        seconds = tamper_and_wait(command, lambda: has_key(args.map, key), args.timeout)
        result: dict[str, Any] = {"what": f"deleted {args.map} {{ {key} }}"}
    else:
        before = element_counts()
        seconds = tamper_and_wait("flush ruleset", lambda: element_counts() == before, args.timeout)
        result = {"what": "nft flush ruleset", "elements": sum(before.values())}
    result["restored_ms"] = None if seconds is None else round(seconds * 1000, 1)
    print(json.dumps(result), flush=True)
    return 0 if seconds is not None else 1


if __name__ == "__main__":
    sys.exit(main())
