"""Kubernetes API clients: --kubeconfig, then $KUBECONFIG, then the in-cluster service account."""

from __future__ import annotations

import os
from typing import Any

from kubernetes import client, config

from .config import ConfigError


def api_clients(kubeconfig: str | None) -> tuple[Any, Any]:
    """(CoreV1Api, DiscoveryV1Api) for the configured cluster."""
    path = kubeconfig or os.environ.get("KUBECONFIG")
    try:
        if path:
            api_client = config.new_client_from_config(config_file=path)
        else:
            config.load_incluster_config()
            api_client = client.ApiClient()
    except (config.ConfigException, OSError) as err:
        where = path or "the in-cluster service account"
        raise ConfigError(f"--kubeconfig: cannot load {where}: {err}") from None
    return client.CoreV1Api(api_client), client.DiscoveryV1Api(api_client)
