"""An in-memory, wire-faithful Kubernetes API server stand-in for tests.

There is no kube-apiserver on the development and CI machines; this package
speaks enough of the real API that the unmodified `kubernetes` Python client
and kubectl work against it, so nftproxy's list/watch/reconcile code is
tested on the real client's code paths.

Use::

    with ApiServerStandin(service_cidr="198.19.0.0/16", bookmark_interval=1.0) as api:
        core = kubernetes.client.CoreV1Api(api.client())
        api.url, api.port, api.kubeconfig_path       # no credentials needed
        api.put_raw("services", {...})               # store unvalidated, emit the watch event
        api.get_raw("services", "web"); api.delete_raw("services", "web")
        api.cut_watches(graceful=False)              # TCP-drop (or cleanly end) every open watch
        api.compact()                                # forget history: older RVs now get 410
        api.set_down(True, mode="refuse"|"unavailable"); api.set_down(False)
        api.drop_connections(host=None)              # reset open keep-alive connections
        api.request_log                              # [(method, path?query), ...]
        api.resource_version, api.watch_count, api.wait_for_watches(n)

    python -m e2e.apiserver --port N --service-cidr 198.19.0.0/16 --kubeconfig-out PATH

Served: core/v1 namespaces, nodes(+status), services(+status), endpoints,
pods(+status), configmaps, events; discovery.k8s.io/v1 endpointslices;
events.k8s.io/v1 events (same storage as core events, converted);
coordination.k8s.io/v1 leases; MetalLB's metallb.io custom resources
(ipaddresspools, l2advertisements, bgpadvertisements, bgppeers, +status),
read from deploy/components/loadbalancer/crds.yaml at import (crds.py), and
those CRDs, read-only, as apiextensions.k8s.io/v1 customresourcedefinitions.
Discovery, a skeletal /openapi/v3 (no schemas; enough for kubectl to delegate
field validation to the server) and server-side Table printing for kubectl
are included.

Known differences from a real API server:
  * JSON and YAML bodies only.  Protobuf/CBOR request bodies get 415, so
    kubectl's generator subcommands (`kubectl create service|namespace ...`)
    fail; `kubectl create -f`, `apply -f`, `get`, `label`, `edit`, `delete` work.
  * No authn/authz, admission, managedFields or field ownership; server-side
    apply is approximated as "create, or strategic-merge onto the live object".
  * Strategic merge patch knows the merge keys of the served kinds only from a
    small table (ports by port, conditions/addresses by type, ...); other lists
    are replaced.
  * Unknown-field pruning and type checks use the Python client's models as
    the schema; IntOrString and other `object` fields are not type-checked.
  * Custom resources: structural pruning, defaulting and the schema keywords
    type, required, enum, minimum and maximum (others, CEL rules and formats
    are not checked); one version per kind for printer columns; no conversion
    between versions; strategic merge patch is not refused as the real server
    refuses it for custom resources.  The CRD list cannot be written (405).
  * Namespace deletion removes the contents at once (no Terminating period);
    pods are deleted immediately (no kubelet grace period).  Objects with
    finalizers do get deletionTimestamp and go once the finalizers are gone.
  * Watch history is one global window (`history_size` events) rather than a
    per-resource watch cache; `compact()` empties it.  A list with
    resourceVersion="0" ignores `limit`, as served-from-cache lists did.
  * No `kubernetes` Service/EndpointSlice for the API server itself exists.
"""

from .server import ApiServerStandin

__all__ = ["ApiServerStandin"]
