"""Start Kopf with geopin's handlers and settings (``geopin run``)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from typing import Any, cast

import kopf

from geopin.core.config import RunConfig


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class _QuietHandlerSuccess(logging.Filter):
    """Drop Kopf's "Handler '...' succeeded." lines: one per watch event of every workload.

    At 10,000 workloads a failover would log thousands of them, and writing them costs the event
    loop time that the repoint needs. Failures are logged (WARNING and up) and ``--verbose`` keeps all.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.INFO and str(record.msg).endswith(" succeeded."))


# Libraries that log request details at DEBUG: the kubernetes client its bodies, httpcore the exception
# h11 raises for a header value it refuses (with that value). Secrets must never reach the log.
QUIET_LOGGERS = ("kubernetes", "urllib3", "httpcore")


def configure_logging(config: RunConfig) -> None:
    handler = logging.StreamHandler()
    if config.log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if config.verbose else logging.INFO)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    if not config.verbose:
        logging.getLogger("kopf.objects").addFilter(_QuietHandlerSuccess())


def run(config: RunConfig) -> None:
    import geopin.handlers  # noqa: F401  (registers the handlers)

    configure_logging(config)
    if config.kubeconfig:
        # Kopf's own login reads the same kubeconfig as geopin's writes.
        os.environ["KUBECONFIG"] = config.kubeconfig
    host = f"[{config.bind_address}]" if ":" in config.bind_address else config.bind_address
    liveness = f"http://{host}:{config.health_port}/healthz" if config.health_port else None
    asyncio.run(
        kopf.operator(
            # Kopf names itself after the user (getpass), which a container's UID need not have: 65532 has
            # no passwd entry in geopin's image. Standalone, the name is only a label: the Pod's, else the host's.
            identity=cast("Any", os.environ.get("POD_NAME") or socket.gethostname()),
            standalone=True,
            clusterwide=not config.namespaces,
            namespaces=config.namespaces,
            liveness_endpoint=liveness,
            memo=kopf.Memo(config=config),
        )
    )
