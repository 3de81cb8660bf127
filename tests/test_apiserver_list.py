"""The stand-in's list hot path (items' JSON cached per stored object) answers what the plain path does.

`?pretty=true` takes the plain path (every object copied, the whole list serialised), so each query
is asked both ways and the answers compared, through pages, selectors, namespaces, snapshots and
writes between pages.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from e2e.apiserver import ApiServerStandin

SLICES = "/apis/discovery.k8s.io/v1"


@pytest.fixture
def api() -> Iterator[ApiServerStandin]:
    with ApiServerStandin(service_cidr="198.19.0.0/16", seed=3) as server:
        for ns in ("a", "b", "c"):
            server.put_raw("namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        for i in range(30):
            ns = "abc"[i % 3]
            server.put_raw("services", {"apiVersion": "v1", "kind": "Service", "metadata": {
                "name": f"svc-{i:02d}", "namespace": ns, "labels": {"tier": "web" if i % 2 else "db"}},
                "spec": {"clusterIP": f"198.19.0.{i + 1}", "ports": [{"port": 80}]}})
            server.put_raw("endpointslices.discovery.k8s.io", {
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": f"svc-{i:02d}-x", "namespace": ns,
                             "labels": {"kubernetes.io/service-name": f"svc-{i:02d}"}},
                "addressType": "IPv4", "endpoints": [{"addresses": [f"198.18.0.{i + 1}"]}]})
        yield server


def get(api: ApiServerStandin, path: str, **query: Any) -> tuple[int, dict[str, Any]]:
    url = f"{api.url}{path}?{urllib.parse.urlencode(query)}"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def both(api: ApiServerStandin, path: str, **query: Any) -> dict[str, Any]:
    fast = get(api, path, **query)
    plain = get(api, path, **query, pretty="true")
    assert fast == plain, (path, query)
    return fast[1]


def pages(api: ApiServerStandin, path: str, between: Any = None, **query: Any) -> list[str]:
    names, token = [], ""
    while True:
        body = both(api, path, **query, **({"continue": token} if token else {}))
        names += [item["metadata"]["name"] for item in body["items"]]
        token = body["metadata"].get("continue", "")
        if not token:
            return names
        if between:
            between()


QUERIES: list[dict[str, Any]] = [
    {}, {"limit": 7}, {"limit": 30}, {"limit": 31}, {"labelSelector": "tier=web", "limit": 4},
    {"fieldSelector": "metadata.name!=svc-03", "limit": 5}, {"labelSelector": "tier notin (web)"},
]


@pytest.mark.parametrize("query", QUERIES, ids=[urllib.parse.urlencode(q) or "all" for q in QUERIES])
def test_lists_and_pages_match_the_plain_path(api: ApiServerStandin, query: dict[str, Any]) -> None:
    for path in ("/api/v1/services", "/api/v1/namespaces/b/services", f"{SLICES}/endpointslices",
                 f"{SLICES}/namespaces/c/endpointslices", "/api/v1/namespaces"):
        names = pages(api, path, **query)
        whole = both(api, path, **{k: v for k, v in query.items() if k != "limit"})["items"]
        assert names == [item["metadata"]["name"] for item in whole], "pages hold the list, each item once"


def test_writes_between_pages_and_at_a_revision(api: ApiServerStandin) -> None:
    before = both(api, "/api/v1/services")
    rv = before["metadata"]["resourceVersion"]
    counter = iter(range(100))

    def write() -> None:
        k = next(counter)
        api.put_raw("services", {"apiVersion": "v1", "kind": "Service",
                                 "metadata": {"name": f"new-{k}", "namespace": "a"},
                                 "spec": {"clusterIP": f"198.19.1.{k + 1}", "ports": [{"port": 80}]}})
        api.delete_raw("services", f"svc-{k:02d}", "abc"[k % 3])

    paged = pages(api, "/api/v1/services", between=write, limit=6)
    assert paged == [item["metadata"]["name"] for item in before["items"]], "a paged list is one snapshot"
    assert both(api, "/api/v1/services", resourceVersion=rv, resourceVersionMatch="Exact") == before
    after = both(api, "/api/v1/services")
    assert "new-0" in [item["metadata"]["name"] for item in after["items"]]
    assert "svc-00" not in [item["metadata"]["name"] for item in after["items"]]


def test_a_replaced_object_is_listed_as_it_is_now(api: ApiServerStandin) -> None:
    both(api, "/api/v1/services")  # every item's JSON cached
    obj = api.get_raw("services", "svc-01", "b")
    assert obj is not None
    obj["metadata"]["labels"] = {"tier": "changed"}
    api.put_raw("services", obj)
    items = both(api, "/api/v1/namespaces/b/services", labelSelector="tier=changed")["items"]
    assert [(i["metadata"]["name"], i["metadata"]["labels"]) for i in items] == [("svc-01", {"tier": "changed"})]
    assert "kind" not in items[0] and "apiVersion" not in items[0]
