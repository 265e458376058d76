"""The soak's invariants, checked while the faults run (every sample) and at the end.

1. No workload is left pinned to a replica that has been down (SIGKILLed, SIGSTOPped, 503, hanging,
   dropping) for longer than BUDGET_SECONDS, unless geopin itself was disrupted within that time; a
   dead registry is dead at both of its addresses, a faulted proxy only at its own.
2. Every user edit survives: the image's path (all but the host) is always the user's, and a Deployment
   its user opted out (geopin.io/skip) is its user's intent again within BUDGET_SECONDS.
3. After the policies are deleted, every surviving Deployment holds exactly its user's image, and no
   geopin annotation is left.
4. Never two writers: every template or status write by a geopin replica was received while that
   replica held the Lease (the last successful Lease write before it, by the API server's clock).
5. Writes are bounded: at most MAX_WRITES_PER_WINDOW to one Deployment in any WINDOW_SECONDS.
6. No traceback in any geopin log; each geopin's RSS stays under MAX_RSS_MB; each running geopin
   answers an AdmissionReview (sent every sample) within the webhook's timeout, uid echoed.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections import defaultdict
from datetime import datetime
from typing import TYPE_CHECKING, Any

import httpx
import urllib3
from kubernetes.client.exceptions import ApiException
from tests.harness.waiting import WaitTimeout, wait_until

from bench.env import say

if TYPE_CHECKING:
    from tests.harness.geopin_process import Operator

    from bench.soak import SoakEnv
    from bench.soak_faults import Schedule

REGISTRY_FAULTS = frozenset({"registry-kill", "registry-stop"})
WEBHOOK_TIMEOUT_SECONDS = 2.0  # the chart's webhook timeoutSeconds
BUDGET_SECONDS = 45.0  # detection (2 failed probes, 1 s apart) + a repoint of 300 + a leader handover
WINDOW_SECONDS, MAX_WRITES_PER_WINDOW = 10.0, 4
MAX_RSS_MB = 400.0
KEPT_PER_INVARIANT = 3
UNAVAILABLE = (ApiException, OSError, urllib3.exceptions.HTTPError)
GEOPIN_WRITES = frozenset({("deployments", None), ("registrypolicies", "status")})
# (namespace, name) -> (image, annotations); -> its user's image; -> opted out since (monotonic)
Read = tuple[
    dict[tuple[str, str], tuple[str, dict[str, str]]], dict[tuple[str, str], str], dict[tuple[str, str], float]
]


class Checker:
    def __init__(self, env: SoakEnv, seed: int) -> None:
        self.env = env
        self.seed = seed
        self.violations: list[str] = []  # the first KEPT_PER_INVARIANT of each invariant's
        self.violated: dict[str, int] = {}  # invariant number -> how many times
        self._down: dict[str, tuple[float, str]] = {}  # region -> (since, why), monotonic
        self._disrupted = -math.inf
        self._lock = threading.Lock()
        self._active: dict[str, str] = {}
        self.switches = 0
        self.max_rss_mb = 0.0
        self.reviews = 0
        self.max_review_seconds = 0.0
        self._arm_down = self._arm_noticed = False
        self.arm_outages = self.arm_outages_noticed = 0

    # -- ground truth, from the schedule ------------------------------------------------------------

    def down(self, region: str, why: str) -> None:
        with self._lock:
            self._down.setdefault(region, (time.monotonic(), why))

    def up(self, region: str) -> None:
        with self._lock:
            self._down.pop(region, None)

    def down_reason(self, region: str) -> str | None:
        with self._lock:
            found = self._down.get(region)
        return found[1] if found else None

    def disrupted(self, _at: float) -> None:
        self._disrupted = time.monotonic()

    def arm_down(self) -> None:
        self._arm_down = True
        self.arm_outages += 1

    def arm_up(self) -> None:
        self._arm_down = False
        self._arm_noticed = False

    def healed_everything(self) -> None:
        with self._lock:
            self._down.clear()

    # -- while it runs --------------------------------------------------------------------------------

    def settled(self) -> bool:
        """Every Deployment on eastus: its user's image with eastus's endpoint as the host; on the
        node, every Pod wanted Running."""
        return self.unsettled() == [] and self.env.nodes.settled()

    def unsettled(self) -> list[str] | None:
        """The Deployments not (yet) on eastus as their users' images; None while the API cannot answer."""
        read = self._read()
        if read is None:
            return None
        templates, intent, opted_out = read
        found = [f"{n}/{d}: missing" for n, d in sorted(intent.keys() - templates.keys())]
        for key, (image, _) in sorted(templates.items()):
            wanted = intent.get(key)
            home = self.env.endpoint(self.env.policy_of(key[0]), "eastus")
            expected = wanted if key in opted_out else f"{home}/{(wanted or '/').split('/', 1)[1]}"
            if wanted is None or image != expected:
                found.append(f"{key[0]}/{key[1]}: {image} (its user's: {wanted})")
        return found

    def settle(self, what: str, timeout: float) -> None:
        """Wait until settled(); a violation of 1 naming the first unsettled Deployments if not in time."""
        try:
            wait_until(self.settled, timeout=timeout, interval=0.5, what=what)
        except WaitTimeout:
            left = self.unsettled()
            found = "the API server does not answer" if left is None else f"{len(left)} Deployments, first {left[:3]}"
            if left == []:
                found = f"the node's Pods: {self.env.nodes.unsettled()}"
            self.violate(f"1 (not settled {timeout:g}s after {what}): {found}")

    def _read(self) -> Read | None:
        """The Deployments, their users' intent and opt-outs at one instant; None while the API cannot answer."""
        with self.env.lock:
            try:
                return self.env.templates(), dict(self.env.intent), dict(self.env.opted_out)
            except UNAVAILABLE:
                return None

    def sample(self, at: float) -> None:
        env = self.env
        read = self._read()
        if read is None:
            return  # the API server restarts, or etcd is paused: nothing to read now
        templates, intent, opted_out = read
        now = time.monotonic()
        for key, (image, notes) in sorted(templates.items()):
            wanted = intent.get(key)
            if wanted is not None and image.split("/", 1)[1] != wanted.split("/", 1)[1]:
                self.violate(f"2 (user edit lost) at {at:.0f}s: {key[0]}/{key[1]} holds {image}, the user set {wanted}")
            since = opted_out.get(key)
            if since is None or now - since <= BUDGET_SECONDS or now - self._disrupted <= BUDGET_SECONDS:
                continue
            left = sorted(k for k in notes if k.startswith("geopin.io/") and k != "geopin.io/skip")
            if image != wanted or left:
                self.violate(f"2 (opt-out not honoured) at {at:.0f}s: {key[0]}/{key[1]} opted out "
                             f"{now - since:.0f}s ago holds {image} {left}, its user's is {wanted}")  # fmt: skip
        with self._lock:
            down = dict(self._down)
        for region, (since, why) in sorted(down.items()):
            if now - since <= BUDGET_SECONDS or now - self._disrupted <= BUDGET_SECONDS:
                continue
            # A dead registry is dead at both of its addresses; a faulted proxy only at its own.
            dead = {env.proxies[region].endpoint}
            if why in REGISTRY_FAULTS:
                dead.add(env.alternates[region].endpoint)
            stuck = sorted(f"{n}/{d}" for (n, d), (image, _) in templates.items() if image.split("/", 1)[0] in dead)
            if stuck:
                self.violate(
                    f"1 (left on a dead replica) at {at:.0f}s: {region} down ({why}) for {now - since:.0f}s, "
                    f"{len(stuck)} Deployments still on it, first {stuck[0]}"
                )
        if self._arm_down:
            self._arm_check(at)
        with contextlib.suppress(*UNAVAILABLE):  # the API server restarts, or etcd is paused
            env.nodes.check(at, self, self._disrupted, BUDGET_SECONDS)
        try:
            active = env.active_regions()
        except UNAVAILABLE:
            active = {}
        for policy, region in active.items():
            if region and self._active.get(policy) not in (None, region):
                self.switches += 1
            self._active[policy] = region
        for operator, port in zip(env.operators, env.webhook_ports, strict=True):
            if operator.process is not None and operator.process.alive():
                self.max_rss_mb = max(self.max_rss_mb, _rss_mb(operator.process.pid))
            self._review(operator, port, at)
        if self.max_rss_mb > MAX_RSS_MB:
            self.violate(f"6 (memory) at {at:.0f}s: a geopin's RSS reached {self.max_rss_mb:.0f} MB")

    def _arm_check(self, at: float) -> None:
        """1: ARM unreachable keeps the last known replicas (a data plane needs no control plane), and
        the policy says so (ControlPlaneUnavailable)."""
        status = self.env.policy_status(self.env.arm_policy)
        if status is None:
            return
        regions = {row.get("region") for row in status.get("replicas") or []}
        if status.get("replicas") and regions != set(self.env.proxies):
            self.violate(
                f"1 (replicas lost while ARM is down) at {at:.0f}s: {self.env.arm_policy} lists {sorted(regions)}"
            )
        unavailable = [c for c in status.get("conditions") or [] if c.get("type") == "ControlPlaneUnavailable"]
        if not self._arm_noticed and unavailable and unavailable[0].get("status") == "True":
            self._arm_noticed = True
            self.arm_outages_noticed += 1

    def _review(self, operator: Operator, port: int, at: float) -> None:
        """6: a running geopin answers an AdmissionReview within the webhook's timeout, whatever fails
        around it (the admission path reads only memory). A stopped or dead one is the API server's
        failurePolicy: Ignore, not a violation."""
        process = operator.process
        if process is None or not _running(process.pid):
            return
        self.reviews += 1
        uid = f"soak-{self.reviews}"
        registry, namespaces = next(iter(self.env.policies.values()))
        review = {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": uid,
                "operation": "CREATE",
                "namespace": namespaces[0],
                "object": {"metadata": {"name": uid}, "spec": {"containers": [
                    {"name": "app", "image": f"{registry}/soak/app-0:1"}
                ]}},
            },
        }  # fmt: skip
        began = time.monotonic()
        try:
            response = httpx.post(
                f"https://127.0.0.1:{port}/mutate/pods", json=review, verify=False, timeout=WEBHOOK_TIMEOUT_SECONDS
            )
            answer = response.json().get("response") or {}
        except (httpx.HTTPError, ValueError) as e:
            if not _running(process.pid) or isinstance(e, httpx.ConnectError):
                return  # stopped or killed meanwhile, or not listening yet after a restart
            self.violate(f"6 (webhook) at {at:.0f}s: {operator.user} did not answer within "
                          f"{WEBHOOK_TIMEOUT_SECONDS:g}s: {type(e).__name__}")  # fmt: skip
            return
        took = time.monotonic() - began
        self.max_review_seconds = max(self.max_review_seconds, took)
        if response.status_code != 200 or answer.get("uid") != uid or answer.get("allowed") is not True:
            self.violate(f"6 (webhook) at {at:.0f}s: {operator.user} answered {response.status_code} {answer}")

    def violate(self, message: str) -> None:
        """Keep (and print) the first few of each invariant's violations; count them all."""
        invariant = message.split(" ", 1)[0]
        self.violated[invariant] = self.violated.get(invariant, 0) + 1
        if message not in self.violations and self.violated[invariant] <= KEPT_PER_INVARIANT:
            self.violations.append(message)
            say(f"  VIOLATION {message}")

    # -- at the end -----------------------------------------------------------------------------------

    def final(self, mark: int) -> None:
        env = self.env
        with env.lock:
            templates, intent = env.templates(), dict(env.intent)
        if templates.keys() != intent.keys():
            self.violate(f"3 (intent): Deployments differ: {sorted(templates.keys() ^ intent.keys())[:3]}")
        for key in sorted(templates.keys() & intent.keys()):
            image, annotations = templates[key]
            left = sorted(k for k in annotations if k.startswith("geopin.io/"))
            if image != intent[key] or left:
                self.violate(f"3 (intent): {key[0]}/{key[1]} holds {image} {left}, its user's is {intent[key]}")
                break
        env.nodes.final(self)
        self._check_writers(env.cp.audit_events(0), mark)
        for operator in env.operators:
            lines = operator.log().splitlines()
            for start in [i for i, text in enumerate(lines) if "Traceback (most recent call last)" in text]:
                # The exception is the traceback's first unindented line; the line before names who logged it.
                error = next((t for t in lines[start + 1 :] if t and not t.startswith(" ")), "?")
                logged = lines[start - 1] if start else ""
                self.violate(f"6 (traceback) in {operator.log_path} at line {start + 1}: {error} (after: {logged})")

    def _check_writers(self, events: list[dict[str, Any]], mark: int) -> None:
        users = {operator.user for operator in self.env.operators}
        timed = sorted(
            (_received(e), index, e) for index, e in enumerate(events) if (e.get("user") or {}).get("username") in users
        )
        holder: str | None = None
        self.writes: dict[tuple[str, str], list[float]] = defaultdict(list)
        for received, index, event in timed:
            ref, user = event.get("objectRef") or {}, event["user"]["username"]
            code = (event.get("responseStatus") or {}).get("code", 0)
            if ref.get("resource") == "leases" and ref.get("name") == "geopin-soak" and 200 <= code < 300:
                holder = user
                continue
            if (ref.get("resource"), ref.get("subresource")) not in GEOPIN_WRITES or event.get("verb") != "patch":
                continue
            if user != holder:
                self.violate(
                    f"4 (two writers): {user} patched {ref.get('resource')} {ref.get('namespace', '')}/"
                    f"{ref.get('name')} at {event['requestReceivedTimestamp']} while {holder} held the Lease"
                )
            if ref.get("resource") == "deployments" and 200 <= code < 300 and index >= mark:
                self.writes[(ref["namespace"], ref["name"])].append(received)
        for (namespace, name), stamps in sorted(self.writes.items()):
            busiest = max(sum(1 for t in stamps if s <= t < s + WINDOW_SECONDS) for s in stamps)
            if busiest > MAX_WRITES_PER_WINDOW:
                self.violate(f"5 (write storm): {namespace}/{name} written {busiest} times within {WINDOW_SECONDS:g}s")
                break

    def figures(self, schedule: Schedule, mark: int) -> dict[str, Any]:
        writes = getattr(self, "writes", {})
        busiest = max(
            (max(sum(1 for t in s if a <= t < a + WINDOW_SECONDS) for a in s) for s in writes.values() if s), default=0
        )
        return {
            "seed": self.seed,
            "faults": dict(schedule.counts),
            "switches": self.switches,
            "template_writes": sum(len(s) for s in writes.values()),
            "max_writes_per_window": busiest,
            "max_rss_mb": round(self.max_rss_mb, 1),
            "webhook_reviews": self.reviews,
            "arm_outages": self.arm_outages,
            "arm_outages_reported": self.arm_outages_noticed,
            "max_webhook_answer_seconds": round(self.max_review_seconds, 3),
            **self.env.nodes.figures(),
            "violations": list(self.violations),
            "violations_per_invariant": dict(self.violated),
            "timeline": [[e.at, e.fault, e.detail] for e in schedule.timeline],
        }

    def explain(self, schedule: Schedule) -> None:
        print(f"\nsoak FAILED, seed {self.seed} (python -m bench soak --seed {self.seed} reproduces the schedule)")
        print("fault timeline (seconds since the faults began):")
        for event in schedule.timeline:
            print(f"  {event.at:7.1f}  {event.fault:18} {event.detail}")
        print("violations (invariant: how many):", ", ".join(f"{k}: {n}" for k, n in sorted(self.violated.items())))
        for violation in self.violations:
            print(f"  {violation}")


def _received(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["requestReceivedTimestamp"].replace("Z", "+00:00")).timestamp()


def _running(pid: int) -> bool:
    """Alive and not stopped (SIGSTOP): /proc/<pid>/stat's state."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("T", "t", "Z", "X")


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0
