"""Kopf wiring only: importing this package registers every handler. The logic lives in the core."""

from geopin.handlers import lifecycle, namespaces, nodes, policies, pull_errors, workloads

__all__ = ["lifecycle", "namespaces", "nodes", "policies", "pull_errors", "workloads"]
