"""`python -m bench [--smoke] [failover|steady|admission|probe-hang|pods|soak ...]`: run benchmarks in sequence.

`soak` (the chaos soak, bench/soak.py) runs only when named: `python -m bench soak --minutes 20 --seed 7`;
it exits 1 when an invariant was violated.

Results go to bench/results/ (or $BENCH_RESULTS_DIR) as <name>-<timestamp>.json; a smoke run's go to a
new temp directory unless BENCH_RESULTS_DIR is set, so that it leaves nothing in the checkout.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from bench.env import say

NAMES = ("failover", "steady", "admission", "probe-hang", "pods")  # the default run
SOAK = "soak"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "names", nargs="*", choices=[*NAMES, SOAK, []], help="benchmarks to run (default: all but soak)"
    )
    parser.add_argument("--smoke", action="store_true", help="small sizes and short windows (what CI runs)")
    parser.add_argument("--sizes", help="failover: comma-separated N values (default 100,1000,5000; smoke 50)")
    parser.add_argument("--rounds", type=int, help="failover: outages per N up to 1,000 (default 3; smoke 1)")
    parser.add_argument("--deployments", type=int, help="steady: Deployments (default 10000; smoke 300)")
    parser.add_argument("--pods-sizes", help="pods: comma-separated N values (default 100,1000; smoke 10)")
    parser.add_argument("--global-delay", type=float, help="pods: the global endpoint's failover delay (60; smoke 6)")
    parser.add_argument(
        "--strategies", help="pods: comma-separated (default Redirect,Repoint,Repoint-unpaced; smoke Redirect)"
    )
    parser.add_argument("--minutes", type=float, help="soak: how long the faults run (default 20; smoke 2)")
    parser.add_argument("--seed", type=int, default=1, help="soak: the fault schedule's seed (default 1)")
    args = parser.parse_args(argv)
    if args.smoke and not os.environ.get("BENCH_RESULTS_DIR"):
        os.environ["BENCH_RESULTS_DIR"] = tempfile.mkdtemp(prefix="geopin-bench-smoke-")
    names = args.names or list(NAMES)
    began = time.monotonic()
    failed = 0
    for name in names:
        say(f"== {name}{' (smoke)' if args.smoke else ''}")
        if name == "failover":
            from bench import failover

            sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else None
            rounds = args.rounds or (failover.SMOKE_ROUNDS if args.smoke else failover.FULL_ROUNDS)
            failover.run(sizes or (failover.SMOKE_SIZES if args.smoke else failover.FULL_SIZES), rounds)
        elif name == "steady":
            from bench import steady

            count = args.deployments or (steady.SMOKE_DEPLOYMENTS if args.smoke else steady.FULL_DEPLOYMENTS)
            default_window = steady.SMOKE_SECONDS if args.smoke else steady.FULL_SECONDS
            window = float(os.environ.get("BENCH_STEADY_SECONDS") or default_window)
            steady.run(count, window)
        elif name == "admission":
            from bench import admission

            if args.smoke:
                admission.run(admission.SMOKE_RATES, admission.SMOKE_SECONDS)
            else:
                admission.run(admission.FULL_RATES, admission.FULL_SECONDS)
        elif name == "pods":
            from bench import pods

            sizes = [int(s) for s in args.pods_sizes.split(",")] if args.pods_sizes else None
            rounds = args.rounds or (pods.SMOKE_ROUNDS if args.smoke else pods.FULL_ROUNDS)
            delay = args.global_delay or (pods.SMOKE_GLOBAL_DELAY if args.smoke else pods.FULL_GLOBAL_DELAY)
            strategies = tuple(args.strategies.split(",")) if args.strategies else None
            if unknown := sorted(set(strategies or ()) - set(pods.STRATEGIES)):
                parser.error(f"--strategies: unknown {', '.join(unknown)} (known: {', '.join(pods.STRATEGIES)})")
            default = pods.SMOKE_STRATEGIES if args.smoke else pods.FULL_STRATEGIES
            pods.run(
                sizes or (pods.SMOKE_SIZES if args.smoke else pods.FULL_SIZES), rounds, delay, strategies or default
            )
        elif name == SOAK:
            from bench import soak

            failed |= soak.run(args.minutes or (soak.SMOKE_MINUTES if args.smoke else soak.FULL_MINUTES), args.seed)
        else:
            from bench import probe_hang

            probe_hang.run(probe_hang.SMOKE_SECONDS if args.smoke else probe_hang.FULL_SECONDS)
    say(f"done in {time.monotonic() - began:.0f}s")
    return failed


if __name__ == "__main__":
    sys.exit(main())
