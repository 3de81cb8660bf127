"""An in-memory, wire-faithful Kubernetes API server stand-in for tests.

There is no kube-apiserver on the development and CI machines; this package
speaks enough of the real API (discovery, CRUD, patch, watch with bookmarks
and 410 expiry, paging, Service allocation semantics) that the unmodified
`kubernetes` Python client and kubectl work against it.
"""

from .server import ApiServerStandin

__all__ = ["ApiServerStandin"]
