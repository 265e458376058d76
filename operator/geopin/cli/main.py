"""``geopin``: run the operator, plan its rewrites offline, probe endpoints, read policy status.

Exit codes (api.md): 0 success, 1 a problem was found (invalid input, invalid image references,
failed probes, a policy not Ready or Degraded, an unreachable cluster), 2 usage error. Errors are one
line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Sequence
from typing import Any, NoReturn, TextIO

from geopin import __version__
from geopin.cli import manifests
from geopin.cli.errors import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, CliError
from geopin.core.config import RunConfig
from geopin.core.nodes import DEFAULT_CREDENTIAL_FIX, parse_threshold
from geopin.core.policy import InvalidPolicy, Policy, from_spec


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

    _add_run(commands)
    _add_plan(commands)
    _add_probe(commands)
    _add_status(commands)
    commands.add_parser(
        "version",
        help="print the version",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  geopin version              # prints: geopin <version>\n",
    )
    return parser


def _add_run(commands: Any) -> None:
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
    run.add_argument("--workers", type=int, default=8, help="concurrent workload writes (default 8)")
    run.add_argument("--arm-endpoint", help="Azure Resource Manager URL (default: the registry's cloud)")
    run.add_argument(
        "--node-image-credential-fix",
        type=_node_image_release,
        default=DEFAULT_CREDENTIAL_FIX,
        metavar="RELEASE",
        help="the first AKS node image (YYYYMM.DD) whose kubelet credential provider covers *.*.geo.azurecr.io; "
        f"older nodes are at risk for credentials.nodeImageCheck (default {DEFAULT_CREDENTIAL_FIX})",
    )
    run.add_argument("--log-format", choices=["text", "json"], default="text")
    run.add_argument("-v", "--verbose", action="store_true")
    _add_run_servers(run.add_argument_group("servers (metrics, health)"))
    _add_run_admission(run.add_argument_group("admission (webhook, MutatingAdmissionPolicy)"))
    _add_run_election(run.add_argument_group("leader election"))


def _add_run_servers(group: Any) -> None:
    group.add_argument(
        "--bind-address",
        default="0.0.0.0",
        help="address the metrics, health and webhook servers listen on (default 0.0.0.0; the Pod's IP "
        "with hostNetwork, so that pods sharing a host do not collide)",
    )
    group.add_argument("--metrics-port", type=int, default=8080, help="Prometheus /metrics port, 0 to disable")
    group.add_argument(
        "--metrics-secure",
        action="store_true",
        help="serve /metrics over HTTPS to bearer tokens the API server authorizes for GET /metrics "
        "(TokenReview, SubjectAccessReview); default plain HTTP",
    )
    group.add_argument(
        "--metrics-cert-dir", help="directory with tls.crt/tls.key for --metrics-secure (re-read); default self-signed"
    )
    group.add_argument("--health-port", type=int, default=8081, help="liveness /healthz port, 0 to disable")


def _add_run_admission(group: Any) -> None:
    group.add_argument(
        "--admission-mechanism",
        choices=["auto", "policy", "webhook"],
        default="auto",
        help="Admission mode through MutatingAdmissionPolicy (auto: where the API server serves it) or the webhook",
    )
    group.add_argument("--webhook-port", type=int, default=0, help="serve the admission webhook on this port (0: off)")
    group.add_argument(
        "--webhook-cert-dir", help="directory with tls.crt/tls.key (re-read on change); default self-signed"
    )
    group.add_argument(
        "--webhook-cert-secret",
        type=_namespaced_name,
        metavar="NAMESPACE/NAME",
        help="serve the pair in this kubernetes.io/tls Secret, made (self-signed) by the first replica when "
        "absent, so that every replica serves one certificate (the chart's default)",
    )
    group.add_argument("--webhook-config", help="keep this MutatingWebhookConfiguration and its caBundle up to date")
    group.add_argument("--webhook-url", help="URL the API server calls (default: the --webhook-service Service)")
    group.add_argument(
        "--webhook-service", default="geopin-system/geopin:443", help="NAMESPACE/NAME:PORT of the webhook"
    )
    group.add_argument(
        "--webhook-failure-policy",
        choices=["Ignore", "Fail"],
        default="Ignore",
        help="what the API server does when the webhook does not answer: Ignore (admit the Pod unchanged, "
        "the default) or Fail (refuse it)",
    )
    group.add_argument(
        "--webhook-timeout-seconds",
        type=_webhook_timeout,
        default=2,
        metavar="S",
        help="seconds the API server waits for the webhook, 1 to 30 (default 2)",
    )


def _add_run_election(group: Any) -> None:
    group.add_argument(
        "--leader-election",
        action="store_true",
        help="elect one active replica with a Lease in the operator namespace (the chart turns this on)",
    )
    group.add_argument("--lease-name", default="geopin", help="name of the leader-election Lease (default geopin)")


def _add_plan(commands: Any) -> None:
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
    plan.add_argument(
        "files", nargs="*", help="manifest files or directories (their *.yaml, *.yml); '-' or none for stdin"
    )


def _node_image_release(value: str) -> str:
    try:
        parse_threshold(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value.strip()


def _positive_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from None
    if not 0 < seconds <= 600:
        raise argparse.ArgumentTypeError(f"must be > 0 and <= 600 seconds, got {value!r}")
    return seconds


def _namespaced_name(value: str) -> str:
    namespace, _, name = value.partition("/")
    if not namespace or not name or "/" in name:
        raise argparse.ArgumentTypeError(f"{value!r} is not NAMESPACE/NAME")
    return value


def _webhook_timeout(value: str) -> int:
    try:
        seconds = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of seconds: {value!r}") from None
    if not 1 <= seconds <= 30:
        raise argparse.ArgumentTypeError(f"must be 1 to 30 seconds, got {value!r}")
    return seconds


PROBE_EPILOG = textwrap.dedent(
    """
            Each region's endpoint is <name>.<region>.geo.azurecr.io (same cloud suffix as REGISTRY) unless
            --endpoint REGION=HOST[:PORT] names it; a registry that is not an Azure Container Registry needs
            an --endpoint for every --region. --global probes REGISTRY itself too (region "global").

            outcomes: ok, timeout, connect, tls, http_5xx, throttled, unauthorized, not_found, data_endpoint
            (a 401 with a WWW-Authenticate challenge is ok: the registry is up and asks for credentials;
            data_endpoint: with --canary, the blob download failed at the host the registry redirected
            it to, e.g. <name>.<region>.data.azurecr.io, while the registry itself answered).

            -o json|yaml prints one object:
              registry: REGISTRY
              ok: true when every outcome is ok
              probes: one per endpoint, in --region order (global last):
                - {region, endpoint, outcome, status (HTTP status or null), latencyMilliseconds, message}

            exit status: 0 every endpoint answered ok; 1 any outcome is not ok, or --ca cannot be read or
            holds no PEM certificate (a problem with an input file); 2 usage error (a malformed flag value,
            an --endpoint for a region not given with --region, a missing --endpoint for a non-ACR registry).

            examples:
              geopin probe contoso.azurecr.io --region eastus --region westus
              geopin probe contoso.azurecr.io --region eastus --region westus --global -o json
              geopin probe contoso.azurecr.io --region eastus --canary platform/canary:1 --timeout 5
              geopin probe registry.example.com:5000 --region eastus --endpoint eastus=10.0.0.5:5000 \\
                  --ca ca.pem
              geopin probe localhost:5000 --region dev --endpoint dev=localhost:5000 --scheme http
            """
)


def _add_probe(commands: Any) -> None:
    probe = commands.add_parser(
        "probe",
        help="probe a registry's regional endpoints once and print their health",
        description="Probe each region's endpoint of REGISTRY once, concurrently, as the operator does "
        "(GET /v2/, or with --canary a manifest HEAD and a download of its config blob), and print the "
        "outcome of each.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=PROBE_EPILOG,
    )
    probe.add_argument("registry", metavar="REGISTRY", help="the global login server, e.g. contoso.azurecr.io")
    probe.add_argument(
        "--region", action="append", required=True, metavar="R", help="a replica region to probe (repeatable)"
    )
    probe.add_argument(
        "--endpoint",
        action="append",
        default=[],
        metavar="R=HOST",
        help="explicit host[:port] of region R's replica (repeatable)",
    )
    probe.add_argument(
        "--global", dest="include_global", action="store_true", help="also probe REGISTRY itself (region 'global')"
    )
    probe.add_argument("--ca", metavar="FILE", help="PEM bundle of extra CAs to trust (private registries)")
    probe.add_argument("--scheme", choices=["https", "http"], default="https", help="default https")
    probe.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=2.0,
        metavar="S",
        help="seconds per probe, authentication included (default 2, as spec.probe.timeoutSeconds)",
    )
    probe.add_argument(
        "--canary",
        metavar="IMAGE",
        help="deep probe: HEAD this image's manifest (repo:tag) and download its config blob, instead of GET /v2/",
    )
    probe.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table", help="default table")


def _add_status(commands: Any) -> None:
    status = commands.add_parser(
        "status",
        help="show the RegistryPolicies in the cluster: replica health, active endpoint, last switch",
        description="Read RegistryPolicies (all, or POLICY) from the cluster and summarise their status.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent(
            """
            The table output starts with one line per policy, then a block per policy: registry, cluster
            region, active region and endpoint, healthy replicas, workload counts, the Ready, Degraded,
            FailedOver, ControlPlaneUnavailable and NodeCredentials conditions ("-" when absent), the replicas
            and the last switch of the active endpoint.

            -o json|yaml prints one object:
              ok: true when every listed policy is Ready=True and not Degraded=True
              policies: one per policy, sorted by name:
                - name, registry, mode, generation, observedGeneration,
                  clusterRegion, activeRegion, activeEndpoint, healthy ("2/3"),
                  workloads: {total, pinned, awaitingReplication, skipped, invalid},
                  conditions: {Ready, Degraded, FailedOver, ControlPlaneUnavailable, NodeCredentials}: each null
                    when absent,
                    else {status, reason, message, lastTransitionTime},
                  replicas: [{region, endpoint, state, consecutiveFailures, latencyMilliseconds,
                              lastProbeTime, lastTransitionTime, message}],
                  lastSwitch: null or {from, to, reason, time},
                  ok: Ready=True and not Degraded=True
            Fields the operator has not written yet are null.

            exit status: 0 every listed policy is Ready and not Degraded (or there is none); 1 a policy is not
            Ready or is Degraded, POLICY does not exist, the CRD is not installed, or the cluster cannot be
            reached or refuses the request; 2 usage error.

            examples:
              geopin status                               # every policy, $KUBECONFIG or in-cluster
              geopin status contoso --kubeconfig ~/.kube/config
              geopin status -o json | jq '.policies[] | {name, activeRegion, ready: .conditions.Ready.status}'
              geopin status contoso && echo "contoso is Ready and not Degraded"
            """
        ),
    )
    status.add_argument("policy", metavar="POLICY", nargs="?", help="one RegistryPolicy (default: all)")
    status.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then $KUBECONFIG)")
    status.add_argument(
        "--request-timeout",
        type=_positive_seconds,
        default=10.0,
        metavar="S",
        help="seconds to connect to and to wait for the API server (default 10)",
    )
    status.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table", help="default table")


def _load_yaml(path: str, stdin: TextIO) -> list[manifests.Document]:
    try:
        if path == "-":
            text = stdin.read()
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        return manifests.load(text)
    except OSError as e:
        raise CliError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise CliError(f"{path}: not UTF-8 text") from None
    except manifests.ManifestError as e:
        raise CliError(f"{path}: not valid YAML: {e}") from None


def _manifest_paths(paths: Sequence[str]) -> list[str]:
    """Files as given; a directory stands for its *.yaml and *.yml files, recursively, in sorted order."""
    found: list[str] = []
    for path in paths:
        if path != "-" and os.path.isdir(path):
            found.extend(
                sorted(
                    os.path.join(root, name)
                    for root, _, names in os.walk(path)
                    for name in names
                    if name.endswith((".yaml", ".yml"))
                )
            )
        else:
            found.append(path)
    return found


def _load_policy(path: str, stdin: TextIO) -> Policy:
    docs = [d.value for d in _load_yaml(path, stdin)]
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
    from geopin.core.plan import PlanUsageError, apply_patches, plan_documents

    policy = _load_policy(args.policy, stdin)
    documents: list[manifests.Document] = []
    for path in _manifest_paths(args.files or ["-"]):
        documents.extend(_load_yaml(path, stdin))
    try:
        result = plan_documents(policy, [d.value for d in documents], args.region, args.active_region)
    except PlanUsageError as e:
        raise CliError(str(e), EXIT_USAGE) from None
    manifests.dump(apply_patches([d.tree for d in documents], result), stdout)
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


def _probe(args: argparse.Namespace, stdout: TextIO) -> int:
    from geopin.cli import probe
    from geopin.cli.output import render

    endpoints = probe.parse_endpoints(args.endpoint)
    targets = probe.probe_targets(args.registry, args.region, endpoints, args.include_global)
    probe.check_canary(args.canary)
    ca_bundle = probe.read_ca(args.ca)
    client = probe.make_client(args.scheme, args.timeout, ca_bundle)
    rows = probe.run_probes(client, targets, args.canary)
    document = probe.probe_document(args.registry, rows)
    if args.output == "table":
        stdout.write(probe.format_probe_table(rows))
    else:
        stdout.write(render(document, args.output))
    return EXIT_OK if document["ok"] else EXIT_PROBLEM


def _status(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    from geopin.cli import status as cli_status
    from geopin.cli.output import render

    policies = cli_status.fetch_policies(args.kubeconfig, args.policy, args.request_timeout)
    document = cli_status.status_document(policies)
    if args.output == "table":
        if not policies:
            print("geopin: no RegistryPolicies found", file=stderr)
        stdout.write(cli_status.format_status_table(document))
    else:
        stdout.write(render(document, args.output))
    return cli_status.status_exit_code(document)


def _run(args: argparse.Namespace) -> int:
    from geopin.cli.run import run

    config = RunConfig(
        kubeconfig=args.kubeconfig,
        namespaces=tuple(args.namespace),
        bind_address=args.bind_address,
        metrics_port=args.metrics_port,
        metrics_secure=args.metrics_secure,
        metrics_cert_dir=args.metrics_cert_dir,
        health_port=args.health_port,
        workers=args.workers,
        arm_endpoint=args.arm_endpoint,
        node_image_credential_fix=args.node_image_credential_fix,
        leader_election=args.leader_election,
        admission_mechanism=args.admission_mechanism,
        webhook_port=args.webhook_port,
        webhook_cert_dir=args.webhook_cert_dir,
        webhook_cert_secret=args.webhook_cert_secret,
        webhook_config=args.webhook_config,
        webhook_url=args.webhook_url,
        webhook_service=args.webhook_service,
        webhook_failure_policy=args.webhook_failure_policy,
        webhook_timeout_seconds=args.webhook_timeout_seconds,
        lease_name=args.lease_name,
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
        if args.command == "probe":
            return _probe(args, stdout)
        if args.command == "status":
            return _status(args, stdout, stderr)
        return _run(args)
    except CliError as e:
        print(f"geopin: {e}", file=stderr)
        return e.code
    except KeyboardInterrupt:
        return EXIT_OK
