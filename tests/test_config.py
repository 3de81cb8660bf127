"""Flags and the --config file: kube-proxy's names, clear errors naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from nftproxy.cli import build_parser, settings_from_args
from nftproxy.config import ConfigError
from nftproxy.configfile import parse_duration


def settings(*argv: str):
    return settings_from_args(build_parser().parse_args(["run", "--manifests", "x", *argv]))


def test_defaults_match_kube_proxy() -> None:
    s = settings("--node-name", "n1")
    assert (s.min_sync_period, s.sync_period) == (1.0, 3600.0)
    assert s.metrics_bind == ("127.0.0.1", 10249) and s.healthz_bind == ("0.0.0.0", 10256)
    assert s.proxy.nodeport_cidrs_of(4) == ("0.0.0.0/0",) and s.proxy.nodeport_cidrs_of(6) == ("::/0",)


def test_config_file_and_flags_override_it(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text("""apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clusterCIDR: 198.18.128.0/17,2001:db8:1::/56
nodePortAddresses: [198.18.0.0/24]
minSyncPeriod: 500ms
syncPeriod: 1h30m
metricsBindAddress: 0.0.0.0:9999
hostnameOverride: worker-7
nftables: {masqueradeAll: true}
logging: {format: json}
""")
    s = settings("--config", str(cfg))
    assert s.proxy.cluster_cidrs == ("198.18.128.0/17", "2001:db8:1::/56")
    assert s.proxy.nodeport_cidrs_of(4) == ("198.18.0.0/24",) and s.proxy.nodeport_cidrs_of(6) == ("::/0",)
    assert (s.min_sync_period, s.sync_period, s.metrics_bind) == (0.5, 5400.0, ("0.0.0.0", 9999))
    assert s.proxy.node_name == "worker-7" and s.proxy.masquerade_all and s.log_format == "json"
    s = settings("--config", str(cfg), "--min-sync-period", "0", "--hostname-override", "other")
    assert s.min_sync_period == 0.0 and s.proxy.node_name == "other"


@pytest.mark.parametrize(("text", "message"), [
    ("kind: KubeProxyConfiguration\nclusterCidr: 10.0.0.0/8\n", "unknown field 'clusterCidr'"),
    ("syncPeriod: soon\n", "syncPeriod: expected a duration such as 1s"),
    ("mode: iptables\n", "mode: nftproxy only implements nftables"),
    ("nftables: {masqueradeAll: yes-please}\n", "masqueradeAll: expected true or false"),
    ("metricsBindAddress: localhost\n", "metricsBindAddress: expected host:port"),
    ("nftables: {syncPeriodd: 1s}\n", "unknown field nftables.'syncPeriodd'"),
    ("clusterCIDR: 10.0.0.0/8,10.1.0.0/16\n", "--cluster-cidr: at most one IPv4 CIDR"),
    (": : :\n", "not valid YAML"),
])
def test_bad_config_file_names_the_field(tmp_path: Path, text: str, message: str) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as err:
        settings("--config", str(cfg))
    assert message in str(err.value)


def test_bad_flags_name_the_flag() -> None:
    for argv, message in [(("--min-sync-period=-1s",), "--min-sync-period: must not be negative"),
                          (("--sync-period", "0"), "--sync-period: must be greater than 0"),
                          (("--nodeport-addresses", "10.0.0.0/99"), "--nodeport-addresses: not a CIDR"),
                          (("--healthz-bind-address", "0.0.0.0:99999"), "--healthz-bind-address: port must be")]:
        with pytest.raises(ConfigError) as err:
            settings(*argv)
        assert message in str(err.value)


def test_go_durations() -> None:
    assert parse_duration("x", "1h0m0s") == 3600 and parse_duration("x", "250ms") == 0.25
    assert parse_duration("x", 2) == 2.0 and parse_duration("x", "0") == 0.0


def test_json_log_format_is_one_object_per_line(capsys) -> None:
    import json
    import logging

    from nftproxy.logs import setup_logging

    setup_logging("json")
    try:
        logging.getLogger("nftproxy.test").warning("Service %s: %s", "shop/web", "spec.ports[0].port")
        line = capsys.readouterr().err.strip().splitlines()[-1]
        entry = json.loads(line)
        assert entry["level"] == "warning" and entry["logger"] == "nftproxy.test"
        assert entry["msg"] == "Service shop/web: spec.ports[0].port" and entry["ts"].endswith("Z")
    finally:
        setup_logging("plain")
