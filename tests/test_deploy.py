"""deploy/: the kustomizations resolve, every manifest fits the Kubernetes schemas, RBAC is least
privilege, and the DaemonSet runs nftproxy the way it must (host network, NET_ADMIN, probes, config).
MetalLB's CRDs are valid structural schemas with MetalLB's fields, and the ServiceAccount may do what
the LoadBalancer features need.

Fast and offline: no cluster, no kernel. Schemas come from the `kubernetes-validate` package when it
is installed (it bundles them); without it, from the `kubernetes` client's models, strictly (unknown
fields fail). `kubectl kustomize` is compared with the resolver here only where kubectl exists.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from nftproxy.cli import build_parser, settings_from_args
from nftproxy.configfile import parse_bind_address, parse_config

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
NAMESPACE = "kube-system"
BUILDS = {"full": DEPLOY, "no-loadbalancer": DEPLOY / "overlays" / "no-loadbalancer"}
CRDS = DEPLOY / "components" / "loadbalancer" / "crds.yaml"
CLUSTER_SCOPED = ("ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition")

# ---------------------------------------------------------------------------------------------------
# loading


def load_docs(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


def object_id(obj: dict[str, Any]) -> tuple[str, str, str, str]:
    meta = obj.get("metadata") or {}
    return obj["apiVersion"], obj["kind"], meta.get("namespace", ""), meta["name"]


_KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "components", "patches"}


def kustomize(directory: Path, *, kind: str = "Kustomization") -> list[dict[str, Any]]:
    """A small `kustomize build` for what deploy/ uses: resources (files or kustomization
    directories) and components. Anything else fails, so the resolver can never silently diverge
    from kustomize. Files must lie inside the kustomization's directory, as kustomize requires."""
    kfile = directory / "kustomization.yaml"
    assert kfile.is_file(), f"{directory.relative_to(ROOT)}: no kustomization.yaml"
    (spec,) = load_docs(kfile)
    where = kfile.relative_to(ROOT)
    assert spec.get("kind") == kind, f"{where}: kind must be {kind}"
    api = "kustomize.config.k8s.io/v1alpha1" if kind == "Component" else "kustomize.config.k8s.io/v1beta1"
    assert spec.get("apiVersion") == api, f"{where}: apiVersion must be {api}"
    unsupported = set(spec) - _KUSTOMIZATION_KEYS
    assert not unsupported, f"{where}: {sorted(unsupported)} not understood by this test's resolver: extend it"
    objects: list[dict[str, Any]] = []
    for entry in spec.get("resources") or []:
        path = (directory / entry).resolve()
        assert path.exists(), f"{where}: resource {entry} does not exist"
        if path.is_dir():
            objects += kustomize(path)
        else:
            assert path.is_relative_to(directory.resolve()), f"{where}: file {entry} lies outside the kustomization"
            objects += load_docs(path)
    for entry in spec.get("components") or []:
        path = (directory / entry).resolve()
        assert path.is_dir(), f"{where}: component {entry} is not a directory"
        objects += kustomize(path, kind="Component")
    for patch in spec.get("patches") or []:
        _apply_patch(objects, patch, str(where))
    ids = [object_id(obj) for obj in objects]
    duplicates = {i for i in ids if ids.count(i) > 1}
    assert not duplicates, f"{where}: defined more than once: {sorted(duplicates)}"
    return objects


def _apply_patch(objects: list[dict[str, Any]], patch: dict[str, Any], where: str) -> None:
    """kustomize's inline JSON6902 patch, for the one operation deploy/ uses: `add` (`-` appends)."""
    target = patch["target"]
    matches = [o for o in objects if o["kind"] == target["kind"] and o["metadata"]["name"] == target["name"]]
    assert len(matches) == 1, f"{where}: patch target {target} matches {len(matches)} objects"
    for op in yaml.safe_load(patch["patch"]):
        assert op["op"] == "add", f"{where}: only 'add' patches are understood by this test's resolver"
        *parents, last = op["path"].strip("/").split("/")
        node: Any = matches[0]
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node.insert(len(node) if last == "-" else int(last), op["value"])
        else:
            node[last] = op["value"]


@pytest.fixture(scope="module", params=sorted(BUILDS))
def build(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, kustomize(BUILDS[request.param])


@pytest.fixture(scope="module")
def full() -> dict[tuple[str, str], dict[str, Any]]:
    """The full build by (kind, name)."""
    return {(o["kind"], o["metadata"]["name"]): o for o in kustomize(DEPLOY)}


@pytest.fixture(scope="module")
def daemonset(full: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    return full[("DaemonSet", "nftproxy")]


@pytest.fixture(scope="module")
def container(daemonset: dict[str, Any]) -> dict[str, Any]:
    (c,) = daemonset["spec"]["template"]["spec"]["containers"]
    return c


@pytest.fixture(scope="module")
def kind_config() -> dict[str, Any]:
    (doc,) = load_docs(DEPLOY / "kind-config.yaml")
    return doc


@pytest.fixture(scope="module")
def agent_config(full: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    doc = yaml.safe_load(full[("ConfigMap", "nftproxy-config")]["data"]["config.yaml"])
    assert isinstance(doc, dict)
    return doc


# ---------------------------------------------------------------------------------------------------
# files and kustomizations


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses(path: Path) -> None:
    docs = load_docs(path)
    assert docs, f"{path}: empty"
    for doc in docs:
        assert isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc, f"{path}: not an API object"


def test_builds_resolve_and_differ_only_by_the_loadbalancer_component() -> None:
    everything = {object_id(o) for o in kustomize(DEPLOY)}
    without = {object_id(o) for o in kustomize(BUILDS["no-loadbalancer"])}
    assert without < everything
    assert {(kind, name) for _, kind, _, name in everything - without} == {
        ("ClusterRole", "nftproxy-loadbalancer"), ("ClusterRoleBinding", "nftproxy-loadbalancer"),
        ("Role", "nftproxy-loadbalancer"), ("RoleBinding", "nftproxy-loadbalancer"),
        *(("CustomResourceDefinition", f"{plural}.metallb.io") for plural in METALLB_RESOURCES)}


def test_the_agent_without_the_loadbalancer_component_leaves_loadbalancers_alone() -> None:
    """Without the component's RBAC and CRDs the agent must not try to allocate or announce."""
    def args(objects: list[dict[str, Any]]) -> list[str]:
        (ds,) = [o for o in objects if o["kind"] == "DaemonSet"]
        return ds["spec"]["template"]["spec"]["containers"][0]["args"]

    assert "--no-load-balancer" in args(kustomize(BUILDS["no-loadbalancer"]))
    assert "--no-load-balancer" not in args(kustomize(DEPLOY))


# components a user adds to the build when needed (deploy/README.md)
OPTIONAL_COMPONENTS = {DEPLOY / "components" / "bgp-password-secrets"}


def test_no_manifest_is_left_out_of_the_full_build() -> None:
    built = {object_id(o) for o in kustomize(DEPLOY)}
    for path in yaml_files():
        if path.name in ("kustomization.yaml", "kind-config.yaml") or path.parent in OPTIONAL_COMPONENTS:
            continue
        for doc in load_docs(path):
            assert object_id(doc) in built, f"{path.relative_to(ROOT)}: {object_id(doc)} is in no kustomization"


def test_everything_namespaced_is_in_kube_system(build: tuple[str, list[dict[str, Any]]]) -> None:
    for obj in build[1]:
        if obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"].get("namespace") == NAMESPACE, object_id(obj)
        else:
            assert "namespace" not in obj["metadata"], object_id(obj)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
@pytest.mark.parametrize("name", sorted(BUILDS))
def test_kubectl_kustomize_agrees_with_the_resolver(name: str) -> None:
    proc = subprocess.run(["kubectl", "kustomize", str(BUILDS[name])], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    theirs = {object_id(o): o for o in yaml.safe_load_all(proc.stdout) if o}
    ours = {object_id(o): o for o in kustomize(BUILDS[name])}
    assert theirs == ours


# ---------------------------------------------------------------------------------------------------
# schemas


def _strict_model_errors(data: Any, type_name: str, path: str) -> Iterator[str]:
    """Unknown fields and wrong shapes, against the kubernetes client's models (the fallback)."""
    from kubernetes import client

    # the client's type names: list[X] / List[X], dict(str, X) / Dict[str, X], Optional[X]
    optional = re.fullmatch(r"Optional\[(.*)\]", type_name)
    listed = re.fullmatch(r"[lL]ist\[(.*)\]", type_name)
    mapped = re.fullmatch(r"dict\([^,]*, (.*)\)|Dict\[[^,]*, (.*)\]", type_name)
    if optional:
        yield from _strict_model_errors(data, optional.group(1), path)
    elif listed:
        if not isinstance(data, list):
            yield f"{path}: expected a list"
            return
        for i, item in enumerate(data):
            yield from _strict_model_errors(item, listed.group(1), f"{path}[{i}]")
    elif mapped:
        if not isinstance(data, dict):
            yield f"{path}: expected an object"
            return
        for key, value in data.items():
            yield from _strict_model_errors(value, mapped.group(1) or mapped.group(2), f"{path}.{key}")
    elif type_name in ("str", "datetime", "date"):
        if not isinstance(data, str):
            yield f"{path}: expected a string, got {data!r}"
    elif type_name in ("int", "float"):
        if isinstance(data, bool) or not isinstance(data, int | float):
            yield f"{path}: expected a number, got {data!r}"
    elif type_name == "bool":
        if not isinstance(data, bool):
            yield f"{path}: expected true or false, got {data!r}"
    elif type_name == "object":
        return
    else:
        model = getattr(client, type_name)
        if not isinstance(data, dict):
            yield f"{path}: expected an object ({type_name})"
            return
        attrs = {json: attr for attr, json in model.attribute_map.items()}
        for key, value in data.items():
            if key not in attrs:
                yield f"{path}: unknown field {key!r} in {type_name}"
            else:
                yield from _strict_model_errors(value, model.openapi_types[attrs[key]], f"{path}.{key}")


def schema_errors(obj: dict[str, Any]) -> list[str]:
    try:
        import kubernetes_validate
    except ImportError:
        kubernetes_validate = None
    if kubernetes_validate is not None:
        errors = []
        for version in sorted({"1.29", kubernetes_validate.latest_version()}):
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                errors.append(f"Kubernetes {version}: {'.'.join(map(str, err.path))}: {err.message}")
        return errors
    from kubernetes import client

    type_name = obj["apiVersion"].rsplit("/", 1)[-1].capitalize() + obj["kind"]
    assert hasattr(client, type_name), f"no model {type_name} for {object_id(obj)}"
    errors = list(_strict_model_errors(obj, type_name, obj["kind"]))
    if not errors:
        try:  # required fields: the models' constructors refuse None for them
            client.ApiClient()._ApiClient__deserialize(obj, type_name)  # type: ignore[attr-defined]
        except (ValueError, TypeError) as err:
            errors.append(str(err))
    return errors


def test_every_object_fits_the_kubernetes_schema(build: tuple[str, list[dict[str, Any]]]) -> None:
    for obj in build[1]:
        assert schema_errors(obj) == [], object_id(obj)


def test_the_schema_check_catches_a_misspelt_field(daemonset: dict[str, Any]) -> None:
    bad = yaml.safe_load(yaml.safe_dump(daemonset))
    bad["spec"]["template"]["spec"]["hostNetwrok"] = True
    assert schema_errors(bad)


# ---------------------------------------------------------------------------------------------------
# RBAC: an explicit allow-list, per role

GET_LIST_WATCH = {"get", "list", "watch"}
WRITE_EVENTS = {"create", "patch", "update"}
METALLB_RESOURCES = ("ipaddresspools", "l2advertisements", "bgpadvertisements", "bgppeers", "bfdprofiles")
ALLOWED: dict[tuple[str, str], dict[tuple[str, str], set[str]]] = {
    ("ClusterRole", "nftproxy"): {
        ("", "services"): GET_LIST_WATCH,
        ("", "nodes"): GET_LIST_WATCH,
        ("discovery.k8s.io", "endpointslices"): GET_LIST_WATCH,
        ("", "events"): WRITE_EVENTS,
        ("events.k8s.io", "events"): WRITE_EVENTS,
    },
    # components/loadbalancer only
    ("ClusterRole", "nftproxy-loadbalancer"): {
        **{("metallb.io", resource): GET_LIST_WATCH for resource in METALLB_RESOURCES},
        ("", "namespaces"): GET_LIST_WATCH,
        ("", "services"): {"update", "patch"},
        ("", "services/status"): {"get", "update", "patch"},
    },
    ("Role", "nftproxy-loadbalancer"): {
        ("coordination.k8s.io", "leases"): {"get", "list", "watch", "create", "update", "patch"}},
}


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def granted(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    assert "aggregationRule" not in role, f"{role['metadata']['name']}: aggregated roles are not allowed"
    result: dict[tuple[str, str], set[str]] = {}
    for rule in role.get("rules") or []:
        assert set(rule) <= {"apiGroups", "resources", "verbs", "resourceNames"}, f"unexpected rule fields: {rule}"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                result.setdefault((group, resource), set()).update(rule["verbs"])
    return result


def test_rbac_is_least_privilege(build: tuple[str, list[dict[str, Any]]]) -> None:
    name, objects = build
    rbac = [o for o in objects if o["apiVersion"].startswith("rbac.authorization.k8s.io/")]
    for obj in rbac:
        assert not any("*" in s for s in _strings(obj)), f"{obj['kind']} {obj['metadata']['name']}: wildcard"
    roles = {(o["kind"], o["metadata"]["name"]): o for o in rbac if o["kind"] in ("Role", "ClusterRole")}
    for key, role in roles.items():
        assert key in ALLOWED, f"{key}: a role nobody allowed"
        allowed = ALLOWED[key]
        for (group, resource), verbs in granted(role).items():
            assert (group, resource) in allowed, f"{key}: {resource!r} in group {group!r} is not allowed"
            extra = verbs - allowed[(group, resource)]
            assert not extra, f"{key}: verbs {sorted(extra)} on {group or 'core'}/{resource} are not allowed"
        if key[0] == "Role":
            assert role["metadata"].get("namespace") == NAMESPACE, f"{key}: only in {NAMESPACE}"
    expected_roles = set(ALLOWED) if name == "full" else {("ClusterRole", "nftproxy")}
    assert set(roles) == expected_roles
    # ... and exactly what the agent needs, so the allow-list cannot rot into a superset
    for key in expected_roles:
        assert granted(roles[key]) == ALLOWED[key], key


def test_the_password_secrets_component_grants_get_on_secrets_and_nothing_else() -> None:
    (directory,) = OPTIONAL_COMPONENTS
    objects = kustomize(directory, kind="Component")
    (role,) = [o for o in objects if o["kind"] == "Role"]
    (binding,) = [o for o in objects if o["kind"] == "RoleBinding"]
    assert granted(role) == {("", "secrets"): {"get"}}
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "metallb-system"
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "nftproxy", "namespace": NAMESPACE}]


def test_bindings_grant_only_our_roles_to_our_service_account(build: tuple[str, list[dict[str, Any]]]) -> None:
    objects = build[1]
    roles = {(o["kind"], o["metadata"]["name"]) for o in objects if o["kind"] in ("Role", "ClusterRole")}
    bindings = [o for o in objects if o["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    assert ("ServiceAccount", "nftproxy") in {(o["kind"], o["metadata"]["name"]) for o in objects}
    bound = set()
    for b in bindings:
        ref = b["roleRef"]
        assert ref["apiGroup"] == "rbac.authorization.k8s.io"
        assert (ref["kind"], ref["name"]) in roles, f"{b['metadata']['name']}: binds a role not defined here: {ref}"
        if b["kind"] == "ClusterRoleBinding":
            assert ref["kind"] == "ClusterRole"
        bound.add((ref["kind"], ref["name"]))
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": "nftproxy", "namespace": NAMESPACE}]
    assert bound == roles, "every role is bound"


# What the LoadBalancer features do with the agent's ServiceAccount: (group, resource, namespace or "" for
# every namespace) -> verbs. Read MetalLB's objects and Namespaces, assign addresses (Service annotation
# and status), elect announcers through Leases, and report through Events.
LOADBALANCER_NEEDS: dict[tuple[str, str, str], set[str]] = {
    **{("metallb.io", resource, ""): GET_LIST_WATCH for resource in METALLB_RESOURCES},
    ("", "namespaces", ""): GET_LIST_WATCH,
    ("", "services", ""): GET_LIST_WATCH | {"update", "patch"},
    ("", "services/status", ""): {"get", "update", "patch"},
    ("coordination.k8s.io", "leases", NAMESPACE): {"create", "get", "update"},
    ("", "events", ""): {"create", "patch"},
}


def service_account_grants(objects: list[dict[str, Any]]) -> dict[tuple[str, str, str], set[str]]:
    """Everything the bindings give ServiceAccount kube-system/nftproxy, by (group, resource, namespace);
    namespace "" for what a ClusterRoleBinding grants everywhere."""
    roles = {(o["kind"], o["metadata"]["name"]): o for o in objects if o["kind"] in ("Role", "ClusterRole")}
    ours = {"kind": "ServiceAccount", "name": "nftproxy", "namespace": NAMESPACE}
    result: dict[tuple[str, str, str], set[str]] = {}
    for b in objects:
        if b["kind"] not in ("RoleBinding", "ClusterRoleBinding") or ours not in b["subjects"]:
            continue
        where = "" if b["kind"] == "ClusterRoleBinding" else b["metadata"]["namespace"]
        for (group, resource), verbs in granted(roles[(b["roleRef"]["kind"], b["roleRef"]["name"])]).items():
            result.setdefault((group, resource, where), set()).update(verbs)
    return result


def test_service_account_may_do_what_the_loadbalancer_needs(build: tuple[str, list[dict[str, Any]]]) -> None:
    name, objects = build
    grants = service_account_grants(objects)
    if name == "no-loadbalancer":  # nothing of the component's
        assert not any(group in ("metallb.io", "coordination.k8s.io") or resource == "services/status"
                       for group, resource, _ in grants)
        return
    for (group, resource, namespace), verbs in LOADBALANCER_NEEDS.items():
        have = grants.get((group, resource, ""), set()) | grants.get((group, resource, namespace), set())
        assert verbs <= have, f"{group or 'core'}/{resource} in {namespace or 'every namespace'}: {verbs - have}"


# ---------------------------------------------------------------------------------------------------
# MetalLB's CRDs (components/loadbalancer/crds.yaml): valid structural schemas with MetalLB's fields

# kind -> (version, spec fields, required spec fields, spec defaults, status fields)
METALLB_KINDS: dict[str, tuple[str, set[str], set[str], dict[str, Any], set[str]]] = {
    "IPAddressPool": ("v1beta1", {"addresses", "autoAssign", "avoidBuggyIPs", "serviceAllocation"}, {"addresses"},
                      {"autoAssign": True, "avoidBuggyIPs": False},
                      {"assignedIPv4", "assignedIPv6", "availableIPv4", "availableIPv6"}),
    "L2Advertisement": ("v1beta1", {"ipAddressPools", "ipAddressPoolSelectors", "nodeSelectors", "interfaces"},
                        set(), {}, set()),
    "BGPAdvertisement": ("v1beta1", {"ipAddressPools", "ipAddressPoolSelectors", "nodeSelectors",
                                     "aggregationLength", "aggregationLengthV6", "localPref", "communities",
                                     "peers"}, set(), {"aggregationLength": 32, "aggregationLengthV6": 128}, set()),
    "BGPPeer": ("v1beta2", {"myASN", "peerASN", "dynamicASN", "peerAddress", "interface", "peerPort", "sourceAddress",
                            "holdTime", "keepaliveTime", "connectTime", "nodeSelectors", "password", "passwordSecret",
                            "bfdProfile", "ebgpMultiHop", "enableGracefulRestart", "vrf", "routerID", "disableMP",
                            "dualStackAddressFamily"},
                {"myASN"}, {"peerPort": 179, "disableMP": False, "dualStackAddressFamily": False}, set()),
    "BFDProfile": ("v1beta1", {"receiveInterval", "transmitInterval", "detectMultiplier", "echoInterval", "echoMode",
                               "passiveMode", "minimumTtl"}, set(), {}, set()),
}
LABEL_SELECTOR_FIELDS = {("IPAddressPool", "serviceAllocation.namespaceSelectors"),
                         ("IPAddressPool", "serviceAllocation.serviceSelectors"),
                         ("L2Advertisement", "ipAddressPoolSelectors"), ("L2Advertisement", "nodeSelectors"),
                         ("BGPAdvertisement", "ipAddressPoolSelectors"), ("BGPAdvertisement", "nodeSelectors"),
                         ("BGPPeer", "nodeSelectors")}
_SCHEMA_KEYWORDS = {"type", "format", "description", "properties", "required", "items", "additionalProperties",
                    "default", "enum", "minimum", "maximum"}
_SCHEMA_TYPES = {"object", "array", "string", "integer", "number", "boolean"}
_COLUMN_TYPES = {"integer", "number", "string", "boolean", "date"}


def crd_docs() -> list[dict[str, Any]]:
    return load_docs(CRDS)


def structural_errors(node: Any, path: str) -> Iterator[str]:
    """apiextensions' rules for a structural schema, for the keywords these CRDs use: a type at every
    node, items for arrays, properties or additionalProperties (not both) only on objects, required
    fields declared, enums and defaults valid. Other keywords fail, so that the check cannot lag behind."""
    if not isinstance(node, dict):
        yield f"{path}: not a schema"
        return
    unknown = set(node) - _SCHEMA_KEYWORDS
    if unknown:
        yield f"{path}: {sorted(unknown)} not understood by this test: extend it"
    kind = node.get("type")
    if kind not in _SCHEMA_TYPES:
        yield f"{path}: type must be one of {sorted(_SCHEMA_TYPES)} (structural schemas give one everywhere)"
    if kind != "object" and ({"properties", "additionalProperties", "required"} & set(node)):
        yield f"{path}: properties, additionalProperties and required belong to objects"
    if "properties" in node and "additionalProperties" in node:
        yield f"{path}: properties and additionalProperties together"
    if (kind == "array") != ("items" in node):
        yield f"{path}: items goes with, and only with, type array"
    for field in node.get("required") or []:
        if field not in (node.get("properties") or {}):
            yield f"{path}: required field {field!r} is not a property"
    for value in node.get("enum") or []:
        if not jsonschema.Draft4Validator({"type": kind}).is_valid(value):
            yield f"{path}: enum value {value!r} is not a {kind}"
    if "default" in node and not jsonschema.Draft4Validator(node).is_valid(node["default"]):
        yield f"{path}: default {node['default']!r} does not fit its own schema"
    for name, sub in (node.get("properties") or {}).items():
        yield from structural_errors(sub, f"{path}.properties.{name}")
    if "items" in node:
        yield from structural_errors(node["items"], f"{path}.items")
    if "additionalProperties" in node:
        yield from structural_errors(node["additionalProperties"], f"{path}.additionalProperties")


def root_errors(schema: dict[str, Any]) -> Iterator[str]:
    """The root of a CRD schema: an object whose apiVersion, kind and metadata are left to the server."""
    props = schema.get("properties") or {}
    if schema.get("type") != "object" or "default" in schema:
        yield "root: must be an object without a default"
    if props.get("apiVersion") != {"type": "string"} or props.get("kind") != {"type": "string"}:
        yield "root: apiVersion and kind must be plain strings"
    if props.get("metadata") != {"type": "object"}:
        yield "root: metadata may only be {type: object} here (the server validates ObjectMeta itself)"
    yield from structural_errors(schema, "openAPIV3Schema")


def schema_at(schema: dict[str, Any], dotted: str) -> dict[str, Any] | None:
    """The schema node of a simple dotted path (.spec.addresses), through properties."""
    node: dict[str, Any] | None = schema
    for part in dotted.strip(".").split("."):
        node = ((node or {}).get("properties") or {}).get(part)
    return node


@pytest.mark.parametrize("crd", crd_docs(), ids=lambda c: c["metadata"]["name"])
def test_crd_is_a_structural_schema_with_metallbs_fields(crd: dict[str, Any]) -> None:
    spec, names = crd["spec"], crd["spec"]["names"]
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1" and crd["kind"] == "CustomResourceDefinition"
    assert spec["group"] == "metallb.io" and spec["scope"] == "Namespaced"
    assert crd["metadata"]["name"] == f"{names['plural']}.{spec['group']}"
    assert names["plural"] in METALLB_RESOURCES
    assert names["singular"] == names["kind"].lower() and names["plural"] == names["singular"] + "s"
    assert names["listKind"] == names["kind"] + "List"
    version_name, fields, required, defaults, status_fields = METALLB_KINDS[names["kind"]]
    (version,) = spec["versions"]
    assert version["name"] == version_name and version["served"] is True and version["storage"] is True
    schema = version["schema"]["openAPIV3Schema"]
    assert list(root_errors(schema)) == []
    spec_schema = schema["properties"]["spec"]
    assert set(spec_schema["properties"]) == fields
    assert set(spec_schema.get("required") or []) == required
    assert {k: v["default"] for k, v in spec_schema["properties"].items() if "default" in v} == defaults
    assert version["subresources"] == {"status": {}} and "status" in schema["properties"]
    assert set(schema["properties"]["status"].get("properties") or {}) == status_fields
    for column in version.get("additionalPrinterColumns") or []:
        assert column["type"] in _COLUMN_TYPES, column
        assert schema_at(schema, column["jsonPath"]) is not None, f"{column['jsonPath']} is not in the schema"


@pytest.mark.parametrize("kind, field", sorted(LABEL_SELECTOR_FIELDS))
def test_label_selectors_are_metav1_label_selectors(kind: str, field: str) -> None:
    (crd,) = [c for c in crd_docs() if c["spec"]["names"]["kind"] == kind]
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    selectors = schema_at(schema, "spec." + field)
    assert selectors is not None and selectors["type"] == "array"
    selector = selectors["items"]
    assert set(selector["properties"]) == {"matchLabels", "matchExpressions"}
    assert selector["properties"]["matchLabels"]["additionalProperties"] == {"type": "string"}
    expression = selector["properties"]["matchExpressions"]["items"]
    assert set(expression["properties"]) == {"key", "operator", "values"}
    assert set(expression["required"]) == {"key", "operator"}
    assert expression["properties"]["operator"]["enum"] == ["In", "NotIn", "Exists", "DoesNotExist"]


def test_the_structural_check_catches_what_the_server_refuses() -> None:
    schema = crd_docs()[0]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for spoil in (lambda s: s["properties"]["spec"]["properties"]["addresses"].pop("type"),
                  lambda s: s["properties"]["spec"]["properties"]["autoAssign"].update(default="yes"),
                  lambda s: s["properties"]["spec"]["required"].append("adresses"),
                  lambda s: s["properties"]["spec"].update(additionalProperties={"type": "string"}),
                  lambda s: s["properties"]["spec"]["properties"]["addresses"].pop("items"),
                  lambda s: s["properties"].update(metadata={"type": "object", "properties": {}})):
        bad = yaml.safe_load(yaml.safe_dump(schema))
        spoil(bad)
        assert list(root_errors(bad)), spoil


# ---------------------------------------------------------------------------------------------------
# the DaemonSet


def test_daemonset_runs_on_every_node_as_a_node_critical_host_network_pod(daemonset: dict[str, Any]) -> None:
    assert daemonset["metadata"]["namespace"] == NAMESPACE and daemonset["metadata"]["name"] == "nftproxy"
    spec = daemonset["spec"]
    pod = spec["template"]["spec"]
    assert pod["hostNetwork"] is True
    # not ClusterFirstWithHostNet: cluster DNS is a Service nftproxy itself programs
    assert pod["dnsPolicy"] == "Default"
    assert pod["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in pod["tolerations"]
    assert not pod.get("hostPID") and not pod.get("hostIPC") and pod.get("hostUsers", True) is True
    assert pod["serviceAccountName"] == "nftproxy"
    assert spec["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}
    labels = spec["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in spec["selector"]["matchLabels"].items())


def test_container_has_net_admin_and_is_not_privileged(container: dict[str, Any]) -> None:
    sc = container["securityContext"]
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert "NET_ADMIN" in sc["capabilities"]["add"]
    assert set(sc["capabilities"]["add"]) <= {"NET_ADMIN", "NET_RAW", "NET_BIND_SERVICE"}  # the last: BIRD, TCP 179
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc.get("runAsUser", 0) == 0, "added capabilities are effective for uid 0 only"


def test_probes_hit_livez_and_healthz_on_the_healthz_port(container: dict[str, Any],
                                                          agent_config: dict[str, Any]) -> None:
    _, port = parse_bind_address("healthzBindAddress", agent_config["healthzBindAddress"])
    assert port == 10256
    for probe, path in (("livenessProbe", "/livez"), ("readinessProbe", "/healthz"), ("startupProbe", "/livez")):
        assert container[probe]["httpGet"] == {"path": path, "port": port}, probe
    assert {"name": "healthz", "containerPort": port, "protocol": "TCP"} in container["ports"]


def test_resources_and_lib_modules(daemonset: dict[str, Any], container: dict[str, Any]) -> None:
    res = container["resources"]
    assert set(res["requests"]) == {"cpu", "memory"} and "memory" in res["limits"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in daemonset["spec"]["template"]["spec"]["volumes"]}
    assert set(mounts) == set(volumes)
    assert volumes["lib-modules"]["hostPath"]["path"] == "/lib/modules"
    assert mounts["lib-modules"] == {"name": "lib-modules", "mountPath": "/lib/modules", "readOnly": True}
    assert not any(v.get("hostPath", {}).get("path") == "/run/xtables.lock" for v in volumes.values())
    hostpaths = {v["hostPath"]["path"] for v in volumes.values() if "hostPath" in v}
    assert hostpaths == {"/lib/modules"}, "no other host paths"


def container_args(container: dict[str, Any], env: dict[str, str]) -> list[str]:
    """The container's args with $(VAR) expanded the way the kubelet does."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in container["args"]]


def test_args_are_real_flags_and_the_config_is_mounted(tmp_path: Path, full: dict[tuple[str, str], dict[str, Any]],
                                                        daemonset: dict[str, Any], container: dict[str, Any]) -> None:
    assert "command" not in container, "the image's entrypoint `nftproxy run` takes the args"
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert "--hostname-override=$(NODE_NAME)" in container["args"]
    assert any(a.startswith("--config=") for a in container["args"])

    args = build_parser().parse_args(["run", *container_args(container, {"NODE_NAME": "kind-worker"})])
    assert args.node_name == "kind-worker" and not args.manifests and not args.once and not args.dry_run

    # --config names the file the ConfigMap volume puts there
    config_path = Path(args.config)
    mount = next(m for m in container["volumeMounts"] if config_path.is_relative_to(m["mountPath"]))
    volume = next(v for v in daemonset["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    cm = full[("ConfigMap", volume["configMap"]["name"])]
    assert cm["metadata"]["name"] == "nftproxy-config"
    relative = str(config_path.relative_to(mount["mountPath"]))
    items = {i["path"]: i["key"] for i in volume["configMap"].get("items", [])} or {k: k for k in cm["data"]}
    key = items[relative]

    # the settings nftproxy would start with: the whole of it goes through nftproxy's own parsing
    local = tmp_path / "config.yaml"
    local.write_text(cm["data"][key])
    args.config = str(local)
    settings = settings_from_args(args)
    assert settings.proxy.node_name == "kind-worker"
    assert settings.healthz_bind == ("0.0.0.0", 10256)
    assert settings.proxy.cluster_cidrs and settings.proxy.service_cidrs


def test_config_map_parses_with_nftproxys_parser(agent_config: dict[str, Any]) -> None:
    settings = parse_config(agent_config, "nftproxy-config")
    assert agent_config["kind"] == "KubeProxyConfiguration" and agent_config["mode"] == "nftables"
    for field in ("clusterCIDR", "nodePortAddresses", "minSyncPeriod", "syncPeriod", "metricsBindAddress",
                  "healthzBindAddress", "masqueradeAll"):
        assert field in agent_config, field
    assert settings.log_format in ("plain", "json")
    assert "hostnameOverride" not in agent_config, "the node name comes from the downward API"


def test_the_api_server_address_does_not_go_through_a_service(full: dict[tuple[str, str], dict[str, Any]],
                                                               container: dict[str, Any],
                                                               kind_config: dict[str, Any]) -> None:
    (source,) = container["envFrom"]
    data = full[("ConfigMap", source["configMapRef"]["name"])]["data"]
    assert set(data) == {"KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"}
    assert data["KUBERNETES_SERVICE_PORT"].isdigit()
    assert data["KUBERNETES_SERVICE_HOST"] == f"{kind_config.get('name', 'kind')}-control-plane"


# ---------------------------------------------------------------------------------------------------
# kind and the image


def test_kind_cluster_has_no_kube_proxy_and_matching_subnets(kind_config: dict[str, Any], agent_config: dict[str, Any],
                                                             container: dict[str, Any]) -> None:
    assert kind_config["kind"] == "Cluster" and kind_config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    net = kind_config["networking"]
    assert net["kubeProxyMode"] == "none" and net["disableDefaultCNI"] is False
    assert [n["role"] for n in kind_config["nodes"]] == ["control-plane", "worker", "worker"]
    assert agent_config["clusterCIDR"] == net["podSubnet"]
    args = build_parser().parse_args(["run", *container_args(container, {"NODE_NAME": "n"})])
    assert args.service_cidr == net["serviceSubnet"]


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile() -> None:
    steps = dockerfile_instructions()
    args = dict(arg.split("=", 1) for op, arg in steps if op == "ARG" and "=" in arg)
    froms = [arg.split()[0] for op, arg in steps if op == "FROM"]
    assert froms[0] == "${BASE}" and re.search(r"bookworm-slim|slim-bookworm", args["BASE"])
    stages = {arg.split()[-1] for op, arg in steps if op == "FROM" and " AS " in arg.upper()}
    assert set(froms[1:]) <= stages, "every later stage builds on an earlier one"
    runs = " ".join(arg for op, arg in steps if op == "RUN")
    words = set(shlex.split(runs))
    assert {"nftables", "libnftables1", "conntrack", "iproute2", "python3"} <= words
    assert "--no-cache-dir" in runs and "-r /requirements.txt" in runs, "dependencies from pyproject, no pip cache"
    assert not {"curl", "wget", "git"} & words, "no downloads beyond apt and pip"
    assert "ADD" not in {op for op, _ in steps}
    (entrypoint,) = [arg for op, arg in steps if op == "ENTRYPOINT"]
    assert yaml.safe_load(entrypoint) == ["nftproxy", "run"]
    # the dependencies' layer sees only pyproject.toml (through the requirements stage), not the source
    copies = [(i, arg) for i, (op, arg) in enumerate(steps) if op == "COPY"]
    deps_install = next(i for i, (op, arg) in enumerate(steps) if op == "RUN" and "-r /requirements.txt" in arg)
    assert all("nftproxy" not in arg.split()[0] for i, arg in copies if i < deps_install)
    # the COPY lines hold everything the agent's wheel is built from; the e2e test bed stays out
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wheel = project["tool"]["hatch"]["build"]["targets"]["wheel"]
    needed = {"pyproject.toml", project["project"]["readme"], *wheel["packages"], *wheel.get("force-include", {})}
    copied = {src.rstrip("/") for _i, arg in copies for src in arg.split()[:-1] if not src.startswith("--")}
    assert needed - {"e2e"} <= copied, f"not copied into the image: {sorted(needed - copied)}"
    ignored = {line.strip() for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert not (needed - {"e2e"}) & ignored
    assert {"e2e", "tests"} <= ignored, "no test harness in the image"
