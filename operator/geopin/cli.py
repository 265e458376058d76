"""``geopin``: run the operator, or plan its rewrites offline.

Exit codes (api.md): 0 success, 1 a problem was found (invalid input, invalid image references),
2 usage error. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap
from collections.abc import Sequence
from typing import Any, NoReturn, TextIO

import yaml

from geopin import __version__
from geopin.config import RunConfig
from geopin.policy import InvalidPolicy, Policy, from_spec

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_PROBLEM) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"geopin: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="geopin",
        description="Pin workload images to the nearest healthy Azure Container Registry geo-replica.",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = commands.add_parser(
        "run",
        help="run the operator",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent(
            """
            examples:
              geopin run                                   # in-cluster, all namespaces
              geopin run --kubeconfig .dev/kubeconfig --metrics-port 9090
            """
        ),
    )
    run.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then $KUBECONFIG)")
    run.add_argument("--namespace", action="append", default=[], help="watch only this namespace (repeatable)")
    run.add_argument("--operator-namespace", help="the namespace geopin runs in (default: $POD_NAMESPACE)")
    run.add_argument("--metrics-port", type=int, default=8080, help="Prometheus /metrics port, 0 to disable")
    run.add_argument("--health-port", type=int, default=8081, help="liveness /healthz port, 0 to disable")
    run.add_argument("--workers", type=int, default=8, help="concurrent workload writes (default 8)")
    run.add_argument("--arm-endpoint", help="Azure Resource Manager URL (default: the registry's cloud)")
    run.add_argument("--log-format", choices=["text", "json"], default="text")
    run.add_argument("-v", "--verbose", action="store_true")

    plan = commands.add_parser(
        "plan",
        help="print manifests rewritten as the operator would (offline)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent(
            """
            Reads multi-document YAML from the files (or stdin with none or '-'), writes the
            rewritten documents to stdout and a summary and warnings to stderr.

            examples:
              geopin plan --policy examples/registrypolicy.yaml --region eastus examples/workloads/*.yaml
              kustomize build . | geopin plan --policy policy.yaml --region westeurope
              geopin plan --policy policy.yaml --region eastus --active-region westus app.yaml  # after a failover
            """
        ),
    )
    plan.add_argument("--policy", required=True, help="a RegistryPolicy manifest")
    plan.add_argument("--region", help="the cluster's region (required when the policy says region: auto)")
    plan.add_argument("--active-region", help="plan as if only this replica (or 'global') were healthy")
    plan.add_argument("files", nargs="*", help="manifest files; '-' or none for stdin")

    commands.add_parser("version", help="print the version")
    return parser


def _load_yaml(path: str, stdin: TextIO) -> list[Any]:
    try:
        if path == "-":
            return list(yaml.safe_load_all(stdin))
        with open(path, encoding="utf-8") as f:
            return list(yaml.safe_load_all(f))
    except OSError as e:
        raise CliError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise CliError(f"{path}: not UTF-8 text") from None
    except yaml.YAMLError as e:
        raise CliError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None


def _load_policy(path: str, stdin: TextIO) -> Policy:
    docs = [d for d in _load_yaml(path, stdin) if d is not None]
    policies = [d for d in docs if isinstance(d, dict) and d.get("kind") == "RegistryPolicy"]
    if len(policies) != 1:
        raise CliError(f"{path}: expected exactly one RegistryPolicy, found {len(policies)}")
    doc = policies[0]
    metadata, spec = doc.get("metadata") or {}, doc.get("spec") or {}
    if not isinstance(metadata, dict) or not isinstance(spec, dict):
        raise CliError(f"{path}: metadata and spec of a RegistryPolicy must be objects")
    try:
        return from_spec(str(metadata.get("name", "")), spec)
    except InvalidPolicy as e:
        raise CliError(f"{path}: invalid RegistryPolicy: {e}") from None


def _plan(args: argparse.Namespace, stdin: TextIO, stdout: TextIO, stderr: TextIO) -> int:
    from geopin.plan import PlanUsageError, plan_documents

    policy = _load_policy(args.policy, stdin)
    documents: list[Any] = []
    for path in args.files or ["-"]:
        documents.extend(_load_yaml(path, stdin))
    try:
        result = plan_documents(policy, documents, args.region, args.active_region)
    except PlanUsageError as e:
        raise CliError(str(e), EXIT_USAGE) from None
    yaml.safe_dump_all(result.documents, stdout, sort_keys=False, explicit_start=True)
    for line in result.rewritten:
        print(f"rewrite: {line}", file=stderr)
    for line in result.warnings:
        print(f"warning: {line}", file=stderr)
    print(
        f"geopin plan: {len(result.rewritten)} images rewritten in {result.workloads} workloads "
        f"to {result.target}; {len(result.warnings)} warnings",
        file=stderr,
    )
    return EXIT_PROBLEM if result.problems else EXIT_OK


def _run(args: argparse.Namespace) -> int:
    from geopin.operator import run

    config = RunConfig(
        kubeconfig=args.kubeconfig,
        namespaces=tuple(args.namespace),
        metrics_port=args.metrics_port,
        health_port=args.health_port,
        workers=args.workers,
        arm_endpoint=args.arm_endpoint,
        log_format=args.log_format,
        verbose=args.verbose,
        **({"operator_namespace": args.operator_namespace} if args.operator_namespace else {}),
    )
    run(config)
    return EXIT_OK


def main(
    argv: Sequence[str] | None = None,
    stdin: TextIO = sys.stdin,
    stdout: TextIO = sys.stdout,
    stderr: TextIO = sys.stderr,
) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "version":
            print(f"geopin {__version__}", file=stdout)
            return EXIT_OK
        if args.command == "plan":
            return _plan(args, stdin, stdout, stderr)
        return _run(args)
    except CliError as e:
        print(f"geopin: {e}", file=stderr)
        return e.code
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":
    logging.basicConfig()
    sys.exit(main())
