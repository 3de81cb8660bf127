"""One scenario suite, two targets: Service features checked with real traffic.

``python -m e2e.scenarios [--list] [--target namespace|kube] [-k SUBSTRING]`` runs the suite (see
``e2e/README.md``); ``tests/test_e2e_scenarios.py`` runs it against the namespace cluster in CI.
"""

from e2e.scenarios.scenarios import SCENARIOS, describe
from e2e.scenarios.targets import Backend, Reply, Service, Skip, Source, Target, default_target_name, make_target

__all__ = ["SCENARIOS", "Backend", "Reply", "Service", "Skip", "Source", "Target", "default_target_name",
           "describe", "make_target"]
