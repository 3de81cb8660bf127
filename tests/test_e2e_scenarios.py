"""The scenario suite (e2e/scenarios) against the namespace cluster, one test per scenario.

One NamespaceTarget for the module: two nodes, the API server stand-in and a real agent per node.
Scenarios never skip here: the namespace target has everything they need (it sets LoadBalancer
ingress IPs itself). The same scenarios run against a real cluster with `python -m e2e.scenarios
--target kube` (e2e/README.md). The runner's own output contract is checked without a cluster.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from e2e.scenarios import SCENARIOS, Skip, __main__ as runner, default_target_name, describe
from e2e.scenarios.namespace import NamespaceTarget
from e2e.scenarios.targets import Target


@pytest.fixture(scope="module")
def target() -> Iterator[NamespaceTarget]:
    with NamespaceTarget() as t:
        yield t


@pytest.mark.kernel
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario(target: NamespaceTarget, name: str) -> None:
    try:
        SCENARIOS[name](target)
    except Skip as reason:
        pytest.fail(f"{name} skipped on the namespace target, which must run every scenario: {reason}")
    except AssertionError:
        print(target.agent_logs())  # shown by pytest for the failed test
        raise


def test_every_scenario_states_its_expected_outcome() -> None:
    assert len(SCENARIOS) >= 12
    for name, fn in SCENARIOS.items():
        assert describe(fn), f"{name} has no docstring"


def test_default_target() -> None:
    assert default_target_name({}) == "namespace"
    assert default_target_name({"KUBECONFIG": "/k"}) == "kube"
    assert default_target_name({"KUBECONFIG": "/k", "NFTPROXY_E2E_TARGET": "namespace"}) == "namespace"
    assert default_target_name({"NFTPROXY_E2E_TARGET": "kube"}) == "kube"
    with pytest.raises(ValueError):
        default_target_name({"NFTPROXY_E2E_TARGET": "kind"})


class _Idle:
    """Stands in for a target: the fake scenarios below ask it for nothing."""

    closed = False

    def start(self) -> "_Idle":
        return self

    def close(self) -> None:
        _Idle.closed = True


def test_runner_prints_one_line_per_scenario_and_the_summary(monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    def passes(target: Target) -> None:
        """Passes."""

    def fails(target: Target) -> None:
        """Fails."""
        raise AssertionError("expected x, got y")

    def skips(target: Target) -> None:
        """Skips."""
        raise Skip("no LoadBalancer IP")

    def breaks(target: Target) -> None:
        """Breaks."""
        raise RuntimeError("boom")

    monkeypatch.setattr(runner, "SCENARIOS", {"a_passes": passes, "b_fails": fails, "c_skips": skips,
                                              "d_breaks": breaks})
    monkeypatch.setattr(runner, "make_target", lambda name: _Idle())
    assert runner.main(["--target", "namespace"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("PASS  a_passes")
    assert lines[1].startswith("FAIL  b_fails") and "(expected x, got y)" in lines[1]
    assert lines[2].startswith("SKIP  c_skips") and "(no LoadBalancer IP)" in lines[2]
    assert lines[3].startswith("FAIL  d_breaks") and "RuntimeError: boom" in lines[3]
    assert lines[-1] == "1 passed, 2 failed, 1 skipped"
    assert _Idle.closed

    assert runner.main(["--target", "namespace", "-k", "passes"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "1 passed, 0 failed"

    assert runner.main(["--list"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listing] == ["a_passes", "b_fails", "c_skips", "d_breaks"]
    assert listing[1].split(None, 1)[1] == "Fails."
