"""The soak's faults: a seeded schedule, one fault at a time, each undone later (or at once).

Each class is a real part failing as it fails in production: a registry replica SIGKILLed or
SIGSTOPped, answering 503 or 429, hanging (requests read, never answered) or dropping connections, or
flapping; the geopin leader SIGKILLed or SIGSTOPped for longer than its Lease; kube-apiserver
restarted; etcd paused for 10 s; a policy edited (replicas reordered, a replica's endpoint moved to
another address of the same replica and back) or deleted and created again; users editing images,
opting Deployments out and back in, creating and deleting them. ARM is the local fake
(tests/harness/armserver.py): refusing connections, answering 500, or hanging. The real node's faults
(an ACR-shaped replica killed, a data endpoint down, replication lagging) are bench/soak_nodes.py's.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import urllib3
from kubernetes import client
from tests.harness.armserver import Mode as ArmMode

from bench.env import GROUP, PLURAL, VERSION, say
from bench.soak_nodes import WEIGHTS as NODE_WEIGHTS

if TYPE_CHECKING:
    import random
    from collections.abc import Callable

    from tests.harness.faultproxy import Mode

    from bench.soak import SoakEnv
    from bench.soak_checks import Checker

GAP_SECONDS = (3.0, 8.0)
ARM_DOWN_SECONDS = 45.0  # longer than the policy's refreshSeconds (30), so a refresh fails
PROXY_MODES: dict[str, Mode] = {
    "proxy-503": "http_503",
    "proxy-429": "http_429",
    "proxy-stall": "stall",
    "proxy-drop": "drop",
}
HOLD_SECONDS = (15.0, 40.0)
# Faults that stop or delay geopin itself: the "no workload left on a dead replica" budget restarts.
DISRUPTIONS = frozenset({"leader-kill", "leader-stop", "apiserver-restart", "etcd-pause", "policy-recreate"})
WEIGHTS = {
    "registry-kill": 3,
    "registry-stop": 2,
    "proxy-503": 3,
    "proxy-429": 2,
    "proxy-stall": 2,
    "proxy-drop": 1,
    "flap": 2,
    "leader-kill": 2,
    "leader-stop": 2,
    "apiserver-restart": 1,
    "etcd-pause": 1,
    "policy-edit": 1,
    "policy-endpoint": 1,
    "policy-recreate": 1,
    "arm-down": 1,
    "user-edit": 4,
    "user-create-delete": 2,
    "user-opt-out": 2,
    **NODE_WEIGHTS,
}


@dataclass(frozen=True)
class Event:
    at: float  # seconds since the schedule started
    fault: str
    detail: str


class Schedule:
    def __init__(self, env: SoakEnv, rng: random.Random, checker: Checker) -> None:
        self.env = env
        self.rng = rng
        self.checker = checker
        self.timeline: list[Event] = []
        self.counts: Counter[str] = Counter()
        self._undo: list[tuple[float, str, Callable[[], None]]] = []  # (when, what, how)
        self._began = 0.0
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._created = 0
        self._done = threading.Event()
        # The thread outlives the faults until release(): a child process it started (a registry, a
        # geopin, kube-apiserver) dies with the thread that forked it (PR_SET_PDEATHSIG).
        self._release = threading.Event()

    # -- running ------------------------------------------------------------------------------------

    def start(self, seconds: float) -> None:
        self._began = time.monotonic()
        self._thread = threading.Thread(target=self._run, args=(seconds,), name="soak-faults", daemon=True)
        self._thread.start()

    def running(self) -> bool:
        return self._thread is not None and not self._done.is_set()

    def wait(self, seconds: float) -> None:
        """Until the faults are over, or `seconds` have passed."""
        self._done.wait(seconds)

    def join(self) -> None:
        """Wait until the faults are over (the thread stays, see release())."""
        self._done.wait()
        if self._error is not None:
            raise self._error

    def release(self) -> None:
        """The run is over: let the thread end, and with it the processes it started."""
        self._release.set()
        if self._thread is not None:
            self._thread.join()

    def now(self) -> float:
        return time.monotonic() - self._began

    def _run(self, seconds: float) -> None:
        try:
            kinds, weights = list(WEIGHTS), list(WEIGHTS.values())
            while self.now() < seconds:
                self._undo_due()
                fault = self.rng.choices(kinds, weights)[0]
                self._inject(fault)
                pause = self.rng.uniform(*GAP_SECONDS)
                # The window ends on time: heal_all() undoes what is still on after it.
                deadline = min(time.monotonic() + pause, self._began + seconds)
                while time.monotonic() < deadline:
                    self._undo_due()
                    time.sleep(0.2)  # the schedule's own clock tick
        except BaseException as e:  # reported by join() in the main thread
            self._error = e
        finally:
            self._done.set()
            self._release.wait()

    def _record(self, fault: str, detail: str) -> None:
        self.timeline.append(Event(round(self.now(), 1), fault, detail))
        self.counts[fault] += 1
        if fault in DISRUPTIONS:
            self.checker.disrupted(self.now())
        say(f"  t={self.now():6.1f}s {fault}: {detail}")

    def _later(self, what: str, how: Callable[[], None]) -> None:
        self._undo.append((self.now() + self.rng.uniform(*HOLD_SECONDS), what, how))

    def _undo_due(self) -> None:
        for item in [u for u in self._undo if u[0] <= self.now()]:
            self._undo.remove(item)
            item[2]()
            self.timeline.append(Event(round(self.now(), 1), "undo", item[1]))

    def heal_all(self) -> None:
        for _, what, how in sorted(self._undo, key=lambda u: u[0]):
            how()
            self.timeline.append(Event(round(self.now(), 1), "undo", what))
        self._undo.clear()
        for region in self.env.proxies:
            self.env.proxies[region].set_mode("pass")
        self.env.registries.heal()
        self.env.nodes.heal_all()
        for operator in self.env.operators:
            operator.resume()
            if not operator.alive():
                operator.restart()
        self.checker.healed_everything()

    # -- the faults -----------------------------------------------------------------------------------

    def _inject(self, fault: str) -> None:
        rng, env = self.rng, self.env
        if fault in NODE_WEIGHTS:
            env.nodes.inject(fault, rng, self._record, self._later)
            return
        region = rng.choice(sorted(env.proxies))
        if fault in ("registry-kill", "registry-stop"):
            if self.checker.down_reason(region):
                return  # one fault per replica at a time: the ground truth stays simple
            replica = env.registries[region]
            (replica.stop if fault == "registry-kill" else replica.pause)()
            self.checker.down(region, fault)
            self._record(fault, region)

            def heal() -> None:
                replica.heal()
                self.checker.up(region)

            self._later(f"{region} healed", heal)
        elif fault.startswith("proxy-"):
            if self.checker.down_reason(region):
                return
            proxy = env.proxies[region]
            proxy.set_mode(PROXY_MODES[fault])
            if fault != "proxy-429":  # throttling is not an outage: geopin must not move for it
                self.checker.down(region, fault)
            self._record(fault, region)

            def passes() -> None:
                proxy.set_mode("pass")
                self.checker.up(region)

            self._later(f"{region} proxy passes", passes)
        elif fault == "flap":
            if self.checker.down_reason(region):
                return
            self._record(fault, f"{region}: 503 and back, 4 times, 1.5 s each")
            for _ in range(4):
                env.proxies[region].set_mode("http_503")
                self.checker.down(region, fault)
                time.sleep(1.5)  # the flap's own rhythm
                env.proxies[region].set_mode("pass")
                self.checker.up(region)
                time.sleep(1.5)
        elif fault == "leader-kill":
            leader = env.leader()
            if leader is None or leader.process is None:
                return
            leader.process.popen.kill()
            self._record(fault, f"{leader.identity} SIGKILLed")
            self._undo.append((self.now() + 3.0, f"{leader.identity} started again", leader.restart))
        elif fault == "leader-stop":
            leader = env.leader()
            if leader is None:
                return
            leader.pause()
            self._record(fault, f"{leader.identity} SIGSTOPped for 20 s (the Lease lasts 10 s)")
            self._undo.append((self.now() + 20.0, f"{leader.identity} resumed", leader.resume))
        elif fault == "apiserver-restart":
            self._record(fault, "kube-apiserver SIGTERMed and started again")
            env.cp.restart_apiserver()
        elif fault == "etcd-pause":
            self._record(fault, "etcd SIGSTOPped for 10 s")
            env.cp.pause_etcd()
            time.sleep(10.0)  # the length of the fault
            env.cp.resume_etcd()
        elif fault == "policy-edit":
            name = rng.choice(sorted(_policies()))
            order = tuple(rng.sample(sorted(env.proxies), len(env.proxies)))
            self._patch_replicas(name, order)
            self._record(fault, f"{name}: replicas reordered to {', '.join(order)}")
        elif fault == "policy-endpoint":
            name = rng.choice(sorted(_policies()))
            self._move_endpoint(name, region)
            self._record(fault, f"{name}: {region} now at {env.endpoint(name, region)}")
            self._later(f"{name}: {region}'s endpoint back", functools.partial(self._move_endpoint, name, region))
        elif fault == "arm-down":
            if not env.arm.running or env.arm.mode is not ArmMode.OK:
                return
            how = rng.choice(["refused", "500", "stall"])
            if how == "refused":
                env.arm.stop()
            else:
                env.arm.mode = ArmMode.ERROR if how == "500" else ArmMode.STALL
            self.checker.arm_down()
            self._record(fault, f"ARM {how} for {ARM_DOWN_SECONDS:g} s (longer than a refresh)")

            def arm_up() -> None:
                env.arm.mode = ArmMode.OK
                env.arm.start()
                self.checker.arm_up()

            self._undo.append((self.now() + ARM_DOWN_SECONDS, "ARM answers", arm_up))
        elif fault == "policy-recreate":
            name = rng.choice(sorted(_policies()))
            self._record(fault, f"{name} deleted (restores everything) and created again")
            _retry(lambda: env.custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, name))
            self._wait_gone(name)
            _retry(lambda: env.custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, env.policy_body(name)))
        elif fault == "user-edit":
            keys = rng.sample(sorted(env.intent), 5)
            for namespace, name in keys:
                registry = env.intent[(namespace, name)].split("/", 1)[0]
                tag = rng.randint(2, 999)
                _retry(functools.partial(env.edit_image, namespace, name, f"{registry}/soak/{name}:{tag}"))
            self._record(fault, "new tags: " + ", ".join(f"{n}/{d}" for n, d in keys))
        elif fault == "user-opt-out":
            namespace, name = rng.choice(sorted(env.intent.keys() - env.opted_out.keys()))
            _retry(lambda: env.opt_out(namespace, name, True))
            self._record(fault, f"{namespace}/{name} opted out (geopin.io/skip: geopin restores it and lets go)")
            self._later(
                f"{namespace}/{name} opted back in", lambda: _retry(lambda: env.opt_out(namespace, name, False))
            )
        elif fault == "user-create-delete":
            namespace, name = rng.choice(sorted(env.intent))
            _retry(lambda: env.delete_deployment(namespace, name))
            self._created += 1
            registry = {ns: r for r, namespaces in _policies().values() for ns in namespaces}[namespace]
            new = f"new-{self._created}"
            _retry(lambda: env.create_deployment(namespace, new, f"{registry}/soak/{new}:1"))
            self._record(fault, f"deleted {namespace}/{name}, created {namespace}/{new}")

    def _move_endpoint(self, name: str, region: str) -> None:
        """An SRE points `name`'s `region` at the replica's other endpoint (or back): geopin must move
        the workloads it pinned there, and still restore them exactly (its own pin, recognised)."""
        self.env.moved[name] ^= {region}
        self._patch_replicas(name)

    def _patch_replicas(self, name: str, order: tuple[str, ...] | None = None) -> None:
        """Write `name`'s replica list as the environment has it now (in `order`, else the default)."""
        body = self.env.policy_body(name, order) if order else self.env.policy_body(name)
        replicas = body["spec"]["replicas"]
        _retry(lambda: self.env.custom.patch_cluster_custom_object(
            GROUP, VERSION, PLURAL, name, {"spec": {"replicas": replicas}}
        ))  # fmt: skip

    def _wait_gone(self, name: str) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                self.env.custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, name)
            except client.ApiException as e:
                if e.status == 404:
                    return
            except (OSError, urllib3.exceptions.HTTPError):
                pass  # the API server is restarting: ask again
            time.sleep(0.5)  # polling the deletion with a deadline
        raise TimeoutError(f"policy {name} was not deleted within 120 s (its finalizer restores first)")


def _policies() -> dict[str, tuple[str, tuple[str, ...]]]:
    from bench.soak import POLICIES

    return POLICIES


def _retry(call: Callable[[], Any], attempts: int = 20) -> Any:
    """A user's or an SRE's kubectl: retried while the API server restarts or etcd is paused."""
    for attempt in range(attempts):
        try:
            return call()
        except (client.ApiException, OSError, urllib3.exceptions.HTTPError) as e:
            if isinstance(e, client.ApiException) and e.status not in (None, 0, 409, 429, 500, 503, 504):
                raise
            if attempt == attempts - 1:
                raise
            time.sleep(1.0)  # a user's retry interval
    return None
