"""Soak (issue 9): valid traffic and hostile connections together for minutes, with the SCP's vital signs sampled.

    .venv/bin/python bench/soak.py [--duration 600] [--interval 5] [--kinds storage,commitment]
        [--output bench/soak.json]

Not a test: a measurement for docs/benchmarks.md section 7 (`make soak`; `bench/run.py --only soak` runs it too).
One SCP process (WORKERS=1) on loopback, and at the same time, on every kind of association in ``--kinds``
(support/wire.py: "storage", storage and verification only; "commitment", Storage Commitment Push Model negotiated
as well, which the SCP offers in local mode):

- valid traffic: DCMTK storescu sending ``--instances`` generated CT instances (pydicom, 128 x 128) per
  association, one association after another, and an echoscu between them; every C-STORE must succeed. For
  "commitment", a Storage Commitment requester (bench/harness.py) after each storescu association: the same
  instances stored on an association that negotiated Storage Commitment, an N-ACTION asking for them, and the
  N-EVENT-REPORT on that association, every instance committed;
- hostile traffic: ``--hostile`` connections at a time running the fuzzer's cases (tests/support/fuzz.py, the PDU
  and data set levels on each kind in turn, and the storage commitment level's N-ACTION misuse when "commitment" is
  among the kinds; seeded with ``--seed``) one after another; every case must be answered;
- an "importer" that removes each batch once its manifest is written (as the pipeline consumes them), so the
  disk does not fill over a long run.

Every ``--interval`` seconds: the process's resident memory (VmRSS) and its peak (VmHWM), threads, open
descriptors, bytes in the spool folder, and the traffic so far. The samples go to ``--output`` as JSON; the
summary printed at the end compares the first and last fifth of the run (lines that are flat show no growth), and
the figures once the traffic has stopped against those before it started.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import harness
from harness import DCMTK_ENV, free_port, scp_command, scp_env, serving, write_instances
from support import fuzz, wire

_SUCCESS = re.compile(r"Received Store Response \(Success\)")


def vitals(pid: int, storage: Path) -> dict[str, int]:
    return {**harness.vitals(pid), "spoolBytes": _spool_bytes(storage / ".spool")}


def _spool_bytes(spool: Path) -> int:
    total = 0
    with contextlib.suppress(FileNotFoundError):
        for path in spool.iterdir():
            with contextlib.suppress(FileNotFoundError):  # stored or removed meanwhile
                total += path.stat().st_size
    return total


class Traffic:
    """Counters shared by the traffic threads and the sampler."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.failures: list[str] = []
        self.stop = threading.Event()

    def add(self, key: str, amount: int = 1) -> None:
        with self.lock:
            self.counts[key] += amount

    def fail(self, message: str) -> None:
        with self.lock:
            self.counts["failures"] += 1
            if len(self.failures) < 50:
                self.failures.append(message)


def valid_traffic(port: int, files: list[Path], kinds: list[str], traffic: Traffic) -> None:
    instances = [harness.Instance.read(path) for path in files] if wire.COMMITMENT in kinds else []
    while not traffic.stop.is_set():
        completed = subprocess.run(
            ["storescu", "-v", "127.0.0.1", str(port), *map(str, files)],
            env=DCMTK_ENV,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        stored = len(_SUCCESS.findall(completed.stdout + completed.stderr))
        traffic.add("associations")
        traffic.add("instancesStored", stored)
        if completed.returncode != 0 or stored != len(files):
            traffic.fail(f"storescu: exit {completed.returncode}, {stored}/{len(files)} stored")
        echo = subprocess.run(
            ["echoscu", "127.0.0.1", str(port)], env=DCMTK_ENV, capture_output=True, timeout=60, check=False
        )
        traffic.add("echoes")
        if echo.returncode != 0:
            traffic.fail(f"echoscu: exit {echo.returncode}")
        if instances:
            stored, committed, reason = harness.commit_on_one_association(port, instances, timeout=60)
            traffic.add("commitmentAssociations")
            traffic.add("instancesStored", stored)
            traffic.add("instancesCommitted", len(instances) if committed else 0)
            if not committed:
                traffic.fail(f"commitment association: {stored}/{len(instances)} stored, {reason}")


def hostile_traffic(port: int, seed: int, stream: int, kinds: list[str], traffic: Traffic) -> None:
    generators = [fuzz.cases(seed + stream, 10**9, level, kind) for kind in kinds for level in ("pdu", "dataset")]
    if wire.COMMITMENT in kinds:  # N-ACTION misuse, which only a commitment association carries
        generators.append(fuzz.cases(seed + stream, 10**9, "commitment"))
    while not traffic.stop.is_set():
        for generated in generators:
            case = next(generated)
            try:
                outcome = fuzz.run_case(port, case)
            except (AssertionError, OSError) as error:
                traffic.fail(f"{type(error).__name__}: {error}")
                continue
            traffic.add("hostileCases")
            traffic.add(f"hostileCases.{case.kind}")
            if outcome.statuses and outcome.statuses[0] == 0:
                traffic.add("hostileStored")


# A sealed batch is removed this long after its manifest: a storage commitment request evaluated meanwhile still
# finds the instances it names (local mode commits what is in the store).
CONSUMED_AFTER_SECONDS = 10.0


def importer(storage: Path, traffic: Traffic) -> None:
    """Remove each sealed batch (its manifest written), as the import pipeline would consume it."""
    manifests = storage / "manifests"
    while not traffic.stop.wait(2.0):
        if not manifests.exists():
            continue
        for manifest in list(manifests.glob("*.json")):
            with contextlib.suppress(OSError):
                if time.time() - manifest.stat().st_mtime < CONSUMED_AFTER_SECONDS:
                    continue
            batch = manifest.stem
            shutil.rmtree(storage / "incoming" / batch, ignore_errors=True)
            with contextlib.suppress(OSError):
                manifest.unlink()
            traffic.add("batchesConsumed")


def _settle(pid: int, storage: Path, idle: dict[str, int], seconds: float = 15) -> dict[str, int]:
    deadline = time.monotonic() + seconds
    while True:
        now = vitals(pid, storage)
        done = now["Threads"] <= idle["Threads"] and now["fds"] <= idle["fds"] and now["spoolBytes"] == 0
        if done or time.monotonic() > deadline:
            return now
        time.sleep(0.2)


def summarise(samples: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    fifth = max(1, len(samples) // 5)
    summary = {}
    for key in ("VmRSS", "VmHWM", "Threads", "fds", "spoolBytes"):
        values = [sample[key] for sample in samples]
        summary[key] = {
            "first": values[0],
            "last": values[-1],
            "peak": max(values),
            "meanFirstFifth": round(statistics.mean(values[:fifth]), 1),
            "meanLastFifth": round(statistics.mean(values[-fifth:]), 1),
        }
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=600, help="seconds of traffic (default 600)")
    parser.add_argument("--interval", type=float, default=5, help="seconds between samples (default 5)")
    parser.add_argument("--instances", type=int, default=20, help="instances per valid association")
    parser.add_argument("--hostile", type=int, default=2, help="hostile connections at a time")
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument(
        "--kinds",
        default=",".join(wire.ASSOCIATION_KINDS),
        help="kinds of association the traffic uses: storage, commitment (default both)",
    )
    parser.add_argument("--output", type=Path, default=Path("bench/soak.json"))
    options = parser.parse_args(argv)
    kinds = [kind for kind in options.kinds.split(",") if kind]
    unknown = set(kinds) - set(wire.ASSOCIATION_KINDS)
    if unknown or not kinds:
        parser.error(f"--kinds: {sorted(unknown) or 'none given'}; there are {', '.join(wire.ASSOCIATION_KINDS)}")

    port = free_port()
    with tempfile.TemporaryDirectory() as scratch:
        storage = Path(scratch) / "storage"
        files = write_instances(Path(scratch) / "instances", options.instances, rows=128, columns=128)
        command = scp_command(port, storage, "--acse-timeout", "60", "--network-timeout", "60")
        with serving(command, port, scp_env(1)) as process:
            pid = process.pid
            time.sleep(1.0)
            idle = vitals(pid, storage)
            traffic = Traffic()
            threads = [threading.Thread(target=valid_traffic, args=(port, files, kinds, traffic), daemon=True)]
            threads += [
                threading.Thread(target=hostile_traffic, args=(port, options.seed, n, kinds, traffic), daemon=True)
                for n in range(options.hostile)
            ]
            threads.append(threading.Thread(target=importer, args=(storage, traffic), daemon=True))
            print(f"SCP pid {pid} on port {port}; idle {idle}; {options.duration:.0f} s, seed {options.seed}")
            started = time.monotonic()
            for thread in threads:
                thread.start()
            samples: list[dict[str, Any]] = []
            while (elapsed := time.monotonic() - started) < options.duration:
                time.sleep(max(0.0, min(options.interval, options.duration - elapsed)))
                if process.poll() is not None:
                    traffic.fail(f"the SCP exited with {process.returncode}")
                    break
                with traffic.lock:
                    counts = dict(traffic.counts)
                sample = {"seconds": round(time.monotonic() - started, 1), **vitals(pid, storage), **counts}
                samples.append(sample)
                print(json.dumps(sample), flush=True)
            traffic.stop.set()
            for thread in threads:
                thread.join(timeout=180)
            after = _settle(pid, storage, idle) if process.poll() is None else {}

    summary = summarise(samples) if samples else {}
    result = {
        "command": " ".join(["bench/soak.py", *(argv if argv is not None else sys.argv[1:])]),
        "duration": options.duration,
        "interval": options.interval,
        "seed": options.seed,
        "instancesPerAssociation": options.instances,
        "hostileConnections": options.hostile,
        "kinds": kinds,
        "idleBefore": idle,
        "idleAfter": after,
        "counts": dict(traffic.counts),
        "failures": traffic.failures,
        "summary": summary,
        "samples": samples,
    }
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text(json.dumps(result, indent=1) + "\n")

    print(f"\n{len(samples)} samples over {options.duration:.0f} s; traffic: {dict(traffic.counts)}")
    print("VmRSS, VmHWM in KiB")
    print("| figure | first | last | peak | mean, first fifth | mean, last fifth |")
    print("|---|---|---|---|---|---|")
    for key, row in summary.items():
        print(
            f"| {key} | {row['first']} | {row['last']} | {row['peak']} | {row['meanFirstFifth']} | "
            f"{row['meanLastFifth']} |"
        )
    print(f"idle before: {idle}\nidle after:  {after}")
    for failure in traffic.failures:
        print(f"failure: {failure}")
    return 1 if traffic.failures else 0


if __name__ == "__main__":
    sys.exit(main())
