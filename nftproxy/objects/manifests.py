"""Read Kubernetes objects from YAML/JSON manifest files, as `kubectl apply -f` would take them.

A file may hold several documents and `kind: List` wrappers; a directory is read file by file in name
order. A file that does not parse raises ManifestError naming the file, so the caller can keep the
objects it last read from it instead of deleting Services because of a half-saved edit.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

SUFFIXES = (".yaml", ".yml", ".json")
# libyaml's parser when PyYAML was built with it: the same safe loading, ~7x faster (10,000 Services
# and their slices: ~5 s instead of ~33 s).
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
ObjectKey = tuple[str, str, str]  # kind, namespace, name


class ManifestError(ValueError):
    """A manifest file that cannot be read."""


def manifest_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
    if path.is_file():
        return [path]
    raise ManifestError(f"{path}: no such file or directory")


def _flatten(doc: Any, where: str) -> Iterator[Mapping[str, Any]]:
    if doc is None:
        return
    if not isinstance(doc, Mapping):
        raise ManifestError(f"{where}: expected an object with apiVersion and kind, got {type(doc).__name__}")
    if str(doc.get("kind", "")).endswith("List") and isinstance(doc.get("items"), list):
        for item in doc["items"]:
            yield from _flatten(item, where)
    else:
        yield doc


def read_file(path: Path) -> list[Mapping[str, Any]]:
    try:
        text = path.read_text()
    except OSError as err:
        raise ManifestError(f"{path}: {err.strerror}") from None
    try:
        if path.suffix == ".json":
            docs = [json.loads(text)]
        else:
            docs = list(yaml.load_all(text, Loader=YAML_LOADER))
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        raise ManifestError(f"{path}: not valid YAML/JSON: {err}") from None
    objects: list[Mapping[str, Any]] = []
    for doc in docs:
        objects.extend(_flatten(doc, str(path)))
    return objects


def object_key(obj: Mapping[str, Any]) -> ObjectKey:
    """(kind, namespace, name); never fails on a malformed object (the parsers refuse it by name)."""
    meta = obj.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    namespace = "" if obj.get("kind") == "Node" else str(meta.get("namespace") or "default")
    return (str(obj.get("kind") or ""), namespace, str(meta.get("name") or ""))
