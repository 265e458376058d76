"""Kopf wiring only: importing this package registers every handler. The logic lives in the core."""

from geopin.handlers import namespaces, nodes, policies, pull_errors, runtime, workloads

__all__ = ["namespaces", "nodes", "policies", "pull_errors", "runtime", "workloads"]
