"""The --config file: kube-proxy's KubeProxyConfiguration field names where the meaning is the same.

Pure parsing into plain values; unknown fields and bad values stop startup with a message naming
the field and what it accepts, the way kube-proxy's strict decoding does.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .config import ConfigError

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|µs|ns)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_duration(field: str, value: Any) -> float:
    """Go-style durations ("1s", "500ms", "1h0m0s") or plain seconds, as seconds; never negative."""
    if isinstance(value, bool):
        raise ConfigError(f"{field}: expected a duration such as 1s, 500ms or 1h0m0s, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.startswith("-"):
            raise ConfigError(f"{field}: must not be negative, got {value!r}")
        try:
            seconds = float(text)
        except ValueError:
            parts = _DURATION.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise ConfigError(f"{field}: expected a duration such as 1s, 500ms or 1h0m0s, got {value!r}") from None
            seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    else:
        raise ConfigError(f"{field}: expected a duration such as 1s, 500ms or 1h0m0s, got {value!r}")
    if seconds < 0:
        raise ConfigError(f"{field}: must not be negative, got {value!r}")
    if not math.isfinite(seconds):  # "nan", "inf", 1e400: a period no timer can keep
        raise ConfigError(f"{field}: expected a finite duration such as 1s, 500ms or 1h0m0s, got {value!r}")
    return seconds


def parse_bind_address(field: str, value: Any) -> tuple[str, int] | None:
    """host:port ("0.0.0.0:10256", "[::]:10249"); "" or "0" turns the server off."""
    if value in (None, "", "0"):
        return None
    if not isinstance(value, str) or ":" not in value:
        raise ConfigError(f"{field}: expected host:port such as 0.0.0.0:10256, got {value!r}")
    host, _, port_text = value.rpartition(":")
    host = host.strip("[]")
    if not (port_text.isascii() and port_text.isdigit()) or not 0 <= int(port_text) <= 65535:  # not "²"
        raise ConfigError(f"{field}: port must be 0-65535, got {value!r}")
    return host, int(port_text)


@dataclass(frozen=True, slots=True)
class FileSettings:
    """What a config file may set; None means "not set here" (flags or defaults decide)."""

    cluster_cidr: str | None = None
    nodeport_addresses: tuple[str, ...] | None = None
    min_sync_period: float | None = None
    sync_period: float | None = None
    metrics_bind_address: str | None = None
    healthz_bind_address: str | None = None
    hostname_override: str | None = None
    masquerade_all: bool | None = None
    kubeconfig: str | None = None
    log_format: str | None = None
    lb_enabled: bool | None = None
    lb_class: str | None = None
    lb_lease_namespace: str | None = None
    lb_heartbeat_port: int | None = None


_TOP_LEVEL = {
    "apiVersion", "kind", "clusterCIDR", "nodePortAddresses", "minSyncPeriod", "syncPeriod",
    "metricsBindAddress", "healthzBindAddress", "hostnameOverride", "masqueradeAll", "clientConnection",
    "logging", "nftables", "mode", "bindAddress", "loadBalancer",
}
_NESTED = {"nftables": {"masqueradeAll", "minSyncPeriod", "syncPeriod", "masqueradeBit"},
           "clientConnection": {"kubeconfig", "qps", "burst", "contentType", "acceptContentTypes"},
           "logging": {"format", "verbosity", "flushFrequency", "options"},
           # nftproxy's own: bare-metal LoadBalancer (MetalLB's pools and L2 announcement)
           "loadBalancer": {"enabled", "loadBalancerClass", "leaseNamespace", "heartbeatPort"}}


def parse_config(doc: Any, source: str = "config") -> FileSettings:
    if not isinstance(doc, Mapping):
        raise ConfigError(f"{source}: expected a KubeProxyConfiguration object")
    for key in doc:
        if key not in _TOP_LEVEL:
            raise ConfigError(f"{source}: unknown field {key!r} (accepted: {', '.join(sorted(_TOP_LEVEL))})")
    kind = doc.get("kind")
    if kind not in (None, "KubeProxyConfiguration"):
        raise ConfigError(f"{source}: kind must be KubeProxyConfiguration, got {kind!r}")
    mode = doc.get("mode")
    if mode not in (None, "", "nftables"):
        raise ConfigError(f"{source}: mode: nftproxy only implements nftables, got {mode!r}")
    nested: dict[str, Mapping[str, Any]] = {}
    for section, allowed in _NESTED.items():
        value = doc.get(section) or {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: {section}: expected an object")
        for key in value:
            if key not in allowed:
                raise ConfigError(f"{source}: unknown field {section}.{key!r} (accepted: {', '.join(sorted(allowed))})")
        nested[section] = value

    def pick(name: str, section: str | None = None) -> Any:
        if doc.get(name) is not None:
            return doc[name]
        return nested[section].get(name) if section else None

    cluster_cidr = doc.get("clusterCIDR")
    if cluster_cidr is not None and not isinstance(cluster_cidr, str):
        raise ConfigError(f"{source}: clusterCIDR: expected a comma-separated string of CIDRs")
    npa = doc.get("nodePortAddresses")
    if npa is not None and (not isinstance(npa, list) or not all(isinstance(x, str) for x in npa)):
        raise ConfigError(f"{source}: nodePortAddresses: expected a list of CIDRs")
    masq = pick("masqueradeAll", "nftables")
    if masq is not None and not isinstance(masq, bool):
        raise ConfigError(f"{source}: masqueradeAll: expected true or false, got {masq!r}")
    log_format = nested["logging"].get("format")
    if log_format not in (None, "text", "json", "plain"):
        raise ConfigError(f"{source}: logging.format: expected text or json, got {log_format!r}")
    for name in ("metricsBindAddress", "healthzBindAddress"):
        parse_bind_address(f"{source}: {name}", doc.get(name))
    lb = nested["loadBalancer"]
    if lb.get("enabled") is not None and not isinstance(lb.get("enabled"), bool):
        raise ConfigError(f"{source}: loadBalancer.enabled: expected true or false, got {lb.get('enabled')!r}")
    for name in ("loadBalancerClass", "leaseNamespace"):
        if lb.get(name) is not None and not isinstance(lb.get(name), str):
            raise ConfigError(f"{source}: loadBalancer.{name}: expected a string, got {lb.get(name)!r}")
    hb_port = lb.get("heartbeatPort")
    if hb_port is not None and (isinstance(hb_port, bool) or not isinstance(hb_port, int) or not 1 <= hb_port <= 65535):
        raise ConfigError(f"{source}: loadBalancer.heartbeatPort: expected a port 1-65535, got {hb_port!r}")
    min_sync = pick("minSyncPeriod", "nftables")
    sync = pick("syncPeriod", "nftables")
    return FileSettings(
        cluster_cidr=cluster_cidr,
        nodeport_addresses=tuple(npa) if npa is not None else None,
        min_sync_period=parse_duration(f"{source}: minSyncPeriod", min_sync) if min_sync is not None else None,
        sync_period=parse_duration(f"{source}: syncPeriod", sync) if sync is not None else None,
        metrics_bind_address=doc.get("metricsBindAddress"),
        healthz_bind_address=doc.get("healthzBindAddress"),
        hostname_override=doc.get("hostnameOverride") or None,
        masquerade_all=masq,
        kubeconfig=nested["clientConnection"].get("kubeconfig") or None,
        log_format={"text": "plain"}.get(log_format, log_format) if log_format else None,
        lb_enabled=lb.get("enabled"),
        lb_class=lb.get("loadBalancerClass") or None,
        lb_lease_namespace=lb.get("leaseNamespace") or None,
        lb_heartbeat_port=hb_port,
    )


def load_config_file(path: str | Path) -> FileSettings:
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(f"--config {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"--config {path}: not valid YAML: {err}") from None
    return parse_config(doc, str(path))
