"""The import pipeline at HealthImaging's quotas (issue 26; docs/benchmarks.md section 13).

    .venv/bin/python bench/pipeline_scale.py --batches 1000 --instances-per-batch 100 --json bench/pipeline-scale.json

Batches as the SCP writes them go through TriggerImport, the template's workflow and CheckStatus, against the
HealthImaging fake enforcing the region's quotas, with Lambda concurrency 10 and faults injected at a steady rate,
on a compressed clock (tests/support/scale.py says what is real and what is modelled). Writes what it saw as JSON:
instances, terminal, stuck, duplicateJobs, maxConcurrentJobs, concurrentJobQuota, drainSeconds, boundSeconds and
the per-instance counts; exits 1 when an instance is left unfinished, a batch got two jobs or the quota was passed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT / "tests", ROOT / "container", ROOT):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from support.scale import ScaleOptions, run  # noqa: E402


def passed(report: dict) -> bool:
    return (
        report["stuck"] == 0
        and report["terminal"] == report["instances"]
        and report["duplicateJobs"] == 0
        and report["maxConcurrentJobs"] <= report["concurrentJobQuota"]
        and report["unexpectedFailures"] == 0
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=1000)
    parser.add_argument("--instances-per-batch", type=int, default=100)
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--region", default="us-east-1", help="quotas of this region (ap-southeast-2: 20 jobs)")
    parser.add_argument("--lambda-concurrency", type=int, default=10, help="the account's (a new account: 10)")
    parser.add_argument("--fault-every", type=int, default=50, help="every n-th of each fault (0: none)")
    parser.add_argument("--arrival-seconds", type=float, default=0.0, help="manifests land over this time (0: at once)")
    parser.add_argument("--no-job-events", action="store_true", help="EventBridge delivers no job events: polls only")
    parser.add_argument("--seed", type=int, default=26)
    options = parser.parse_args(argv)
    every = options.fault_every
    report = run(
        ScaleOptions(
            batches=options.batches,
            instances_per_batch=options.instances_per_batch,
            region=options.region,
            lambda_concurrency=options.lambda_concurrency,
            lose_response_every=every,
            server_error_every=every,
            fail_job_every=every,
            duplicate_event_every=every,
            arrival_seconds=options.arrival_seconds,
            job_events=not options.no_job_events,
            seed=options.seed,
        ),
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    report["command"] = ["bench/pipeline_scale.py", *(argv if argv is not None else sys.argv[1:])]
    text = json.dumps(report, indent=1)
    if options.json:
        options.json.write_text(text + "\n")
    print(text)
    return 0 if passed(report) else 1


if __name__ == "__main__":
    sys.exit(main())
