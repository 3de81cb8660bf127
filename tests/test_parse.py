"""Parsing API objects: good ones normalised, bad ones refused with the object and field named."""

from __future__ import annotations

import copy
import ipaddress
import random

import pytest

from nftproxy.objects.addresses import AddressError, ip_text, parse_ip
from nftproxy.objects.model import Endpoint
from nftproxy.objects.parse import InvalidObject, parse_endpoint_slice, parse_service

from e2e.objects import endpoint_slice, service


def test_service_is_normalised() -> None:
    svc = parse_service(service("web", "172.30.0.041", [
        {"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"},
    ], externalIPs=["198.18.0.150", "198.18.0.150"]))
    assert svc is not None
    assert svc.cluster_ips == ("172.30.0.41",), "leading zeros are read as decimal, as upstream does"
    assert [(p.name, p.protocol, p.port) for p in svc.ports] == [("http", "tcp", 80), ("dns", "udp", 53)]
    assert svc.external_ips == ("198.18.0.150",)


def test_no_rules_for_external_name_and_headless() -> None:
    assert parse_service(service("a", "None")) is None
    ext = service("b", "198.19.0.1")
    ext["spec"] = {"type": "ExternalName", "externalName": "example.org"}
    assert parse_service(ext) is None


def test_load_balancer_ingress_skips_proxy_mode_and_hostnames() -> None:
    svc = parse_service(service("lb", "198.19.0.1", type="LoadBalancer", status={"loadBalancer": {"ingress": [
        {"ip": "198.18.0.200"}, {"ip": "198.18.0.201", "ipMode": "Proxy"}, {"hostname": "lb.example"},
        {"ip": "198.18.0.202", "ipMode": "VIP"},
    ]}}))
    assert svc is not None and svc.load_balancer_ips == ("198.18.0.200", "198.18.0.202")


BAD_SERVICES = [
    ("spec.clusterIPs[0]", lambda s: s["spec"].update(clusterIPs=["300.1.1.1"])),
    ("spec.ports[0].port", lambda s: s["spec"]["ports"][0].update(port=0)),
    ("spec.ports[0].port", lambda s: s["spec"]["ports"][0].update(port=65536)),
    ("spec.ports[0].port", lambda s: s["spec"]["ports"][0].update(port="80")),
    ("spec.ports[0].protocol", lambda s: s["spec"]["ports"][0].update(protocol="ICMP")),
    ("spec.ports[1].name", lambda s: s["spec"]["ports"].append({"name": "http", "port": 81})),
    ("spec.ports[1]", lambda s: s["spec"]["ports"].append({"name": "other", "port": 80})),
    ("spec.ports", lambda s: s["spec"].update(ports=[])),
    ("spec.clusterIP", lambda s: (s["spec"].pop("clusterIP"), s["spec"].pop("clusterIPs"))),
    ("spec.clusterIPs[0]", lambda s: s["spec"].update(ipFamilies=["IPv6"])),
    ("spec.externalIPs[0]", lambda s: s["spec"].update(externalIPs=["not-an-ip"])),
    ("spec.type", lambda s: s["spec"].update(type="Magic")),
    ("spec.ports[0].nodePort",
     lambda s: s["spec"].update(type="NodePort") or s["spec"]["ports"][0].update(nodePort=99999)),
    ("spec.sessionAffinityConfig.clientIP.timeoutSeconds",
     lambda s: s["spec"].update(sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 0}})),
    ("spec.loadBalancerSourceRanges[0]", lambda s: s["spec"].update(loadBalancerSourceRanges=["10.0.0.0/33"])),
    ("spec.externalTrafficPolicy", lambda s: s["spec"].update(externalTrafficPolicy="Nearby")),
]


@pytest.mark.parametrize(("field", "breaker"), BAD_SERVICES, ids=[f for f, _ in BAD_SERVICES])
def test_bad_service_names_object_and_field(field: str, breaker) -> None:
    obj = copy.deepcopy(service("web", "198.19.0.10", namespace="shop"))
    breaker(obj)
    with pytest.raises(InvalidObject) as err:
        parse_service(obj)
    assert err.value.field == field
    assert str(err.value).startswith("Service shop/web: " + field)


def test_endpoint_slice_conditions_default_like_the_api() -> None:
    obj = endpoint_slice("web", ["198.18.129.2", "198.18.129.3"])
    obj["endpoints"][0]["conditions"] = {}
    obj["endpoints"][1]["conditions"] = {"ready": False, "serving": True, "terminating": True}
    sl = parse_endpoint_slice(obj)
    assert sl is not None
    first, second = sl.endpoints
    assert (first.ready, first.serving, first.terminating) == (True, True, False)
    assert (second.ready, second.serving, second.terminating) == (False, True, True)


def test_endpoint_slice_ignored_or_refused() -> None:
    assert parse_endpoint_slice(endpoint_slice("web", ["a.example"], address_type="FQDN")) is None
    orphan = endpoint_slice("web", ["198.18.129.2"])
    orphan["metadata"]["labels"] = {}
    assert parse_endpoint_slice(orphan) is None
    wrong_family = parse_endpoint_slice(endpoint_slice("web", ["2001:db8::1"]))
    assert wrong_family is not None and wrong_family.endpoints == ()  # skipped, as upstream; reported
    ((field, why),) = wrong_family.skipped
    assert field == "endpoints[0].addresses[0]" and "not an IPv4 address" in why
    with pytest.raises(InvalidObject) as err:
        parse_endpoint_slice(endpoint_slice("web", ["198.18.129.2"], ports=[{"name": "http", "port": 0}]))
    assert err.value.field == "ports[0].port"


def _address_forms(rng: random.Random) -> list[object]:
    """Canonical and non-canonical spellings, and things that are no address at all."""
    words = [rng.choice([0, 0, 0, 1, rng.randrange(16), rng.randrange(65536)]) for _ in range(8)]
    v6 = ipaddress.IPv6Address(int.from_bytes(b"".join(w.to_bytes(2, "big") for w in words), "big"))
    v4 = ipaddress.IPv4Address(rng.randrange(2**32))
    octets = str(v4).split(".")
    return [
        str(v6), v6.exploded, str(v6).upper(), f"::ffff:{v4}", f"::ffff:{int(v4) >> 16:x}:{int(v4) & 0xFFFF:x}",
        f"::{v4}", f"{v6}%eth0", str(v4), " " + str(v4), ".".join(o.zfill(3) for o in octets),
        ".".join(octets[:3]), f"{v4}.1", "1.2.3.256", "", None, 7, "::g", ":::", "not-an-ip",
    ]


def test_canonical_address_fast_path_agrees_with_the_full_parse() -> None:
    rng = random.Random(4)
    for _ in range(3000):
        for text in _address_forms(rng):
            try:
                expected: object = str(parse_ip(text))
            except AddressError as err:
                expected = f"error: {err}"
            try:
                got: object = ip_text(text)
            except AddressError as err:
                got = f"error: {err}"
            assert got == expected, text


def test_bad_endpoints_are_skipped_with_their_field_named() -> None:
    cases = [
        ("endpoints[1].addresses[0]", lambda e: e[1].update(addresses=["198.18.129.300"])),
        ("endpoints[1].addresses", lambda e: e[1].update(addresses=[])),
        ("endpoints[1].addresses", lambda e: e[1].update(addresses="198.18.129.2")),
        ("endpoints[1].conditions", lambda e: e[1].update(conditions=["ready"])),
        ("endpoints[1].hints", lambda e: e[1].update(hints="zone-a")),
        ("endpoints[1].targetRef", lambda e: e[1].update(targetRef="pod")),
        ("endpoints[1]", lambda e: e.__setitem__(1, "198.18.129.3")),
    ]
    for field, breaker in cases:
        obj = endpoint_slice("web", ["198.18.129.2", "198.18.129.3"])
        breaker(obj["endpoints"])
        sl = parse_endpoint_slice(obj)  # the bad endpoint is skipped and named, the good one kept
        assert sl is not None and [e.address for e in sl.endpoints] == ["198.18.129.2"], field
        assert [f for f, _ in sl.skipped] == [field], (field, sl.skipped)
    ok = endpoint_slice("web", ["198.18.129.2", "198.18.129.3"])
    ok["metadata"]["annotations"] = {"nftproxy.io/weight": "3"}
    ok["endpoints"][1].update(hints={"forZones": [{"name": "a"}]}, targetRef={"name": "web-1"}, zone="a",
                              nodeName="node-2", conditions={"ready": False, "serving": None, "terminating": True})
    sl = parse_endpoint_slice(ok)
    assert sl is not None
    assert sl.endpoints[1] == Endpoint(address="198.18.129.3", family=4, ready=False, serving=False, terminating=True,
                                       node_name="node-2", zone="a", zone_hints=("a",), target_name="web-1", weight=3)
