"""pytest fixtures for the namespace-cluster harness.

Import them into a test module (or a conftest)::

    from e2e.netns.fixtures import namespace_cluster, namespace_cluster_factory  # noqa: F401

    @pytest.mark.kernel
    def test_something(namespace_cluster):            # default: 2 nodes, IPv4 only
        ...

    @pytest.mark.kernel
    @pytest.mark.parametrize("namespace_cluster", [{"nodes": 3, "dual_stack": True}], indirect=True)
    def test_dual_stack(namespace_cluster):
        ...

    @pytest.mark.kernel
    def test_two_clusters(namespace_cluster_factory):
        a = namespace_cluster_factory(nodes=1)
        b = namespace_cluster_factory(nodes=1)

The fixtures *fail* (never skip) when not running as root or when network
namespaces cannot be created: kernel tests must not silently disappear in CI.
Before the first cluster of a session, namespaces left behind by crashed runs
(dead owner process) are removed with :func:`~e2e.netns.cluster.cleanup_stale`.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest

from e2e.netns.cluster import HarnessError, NamespaceCluster, cleanup_stale, require_root_and_netns

_stale_cleaned = False


def _prepare() -> None:
    global _stale_cleaned
    require_root_and_netns()
    if not _stale_cleaned:
        cleanup_stale()
        _stale_cleaned = True


@pytest.fixture
def namespace_cluster_factory() -> Iterator[Callable[..., NamespaceCluster]]:
    """A callable building :class:`NamespaceCluster` objects (kwargs passed through); all are closed afterwards."""
    _prepare()
    clusters: list[NamespaceCluster] = []

    def make(**kwargs: Any) -> NamespaceCluster:
        cluster = NamespaceCluster(**kwargs)
        clusters.append(cluster)
        return cluster

    yield make
    errors = []
    for cluster in clusters:
        try:
            cluster.close()
        except HarnessError as exc:
            errors.append(str(exc))
    if errors:
        raise HarnessError("\n".join(errors))


@pytest.fixture
def namespace_cluster(request: pytest.FixtureRequest,
                      namespace_cluster_factory: Callable[..., NamespaceCluster]) -> NamespaceCluster:
    """A fresh cluster per test; kwargs may be given via indirect parametrization."""
    kwargs = getattr(request, "param", None) or {}
    return namespace_cluster_factory(**kwargs)
