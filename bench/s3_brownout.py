"""The SCP through an S3 brown-out while four DCMTK senders keep sending (issue 26; docs/benchmarks.md section 12).

    .venv/bin/python bench/s3_brownout.py [--phase-seconds 20] [--senders 4] [--json bench/results-s3-brownout.json]

Not a test (tests/container/test_s3_brownout.py is the short one in `make test`): the SCP as shipped (WORKERS=0,
DIMSE_TIMEOUT 60) stores into moto_server through tests/support/brownout.py's proxy. Four phases of
``--phase-seconds`` each: healthy; every upload answered after 2-5 s; half the uploads refused 503 SlowDown; healthy
again. Each sender (storescu -td 35, five instances an association) re-sends what was refused. Recorded: instances
acknowledged per second in each phase, refusals, false successes (an instance answered 0x0000 that is not in the
bucket as sent: must be 0), the longest wait for an answer, associations that ended without an answer for every
instance (sender timeouts), and the SCP's peak resident memory (summed over its processes) and threads.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import threading
import time
from io import BytesIO
from pathlib import Path
from typing import Any

import harness
from harness import BUCKET, FAKE_AWS, free_port, scp_command, scp_env, serving
from pydicom import dcmread
from support.brownout import SLOW, SLOWDOWN, BrownoutProxy, Phase, keep_sending, rates

SENDER_DIMSE_TIMEOUT = 35


class Sampler:
    """The SCP's processes every half second: resident memory summed (and its peak), threads summed."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_rss_mib = 0.0
        self.peak_threads = 0
        self.processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            rss, threads, pids = 0, 0, harness.process_and_children(self.pid)
            for pid in pids:
                with contextlib.suppress(OSError, KeyError):
                    values = harness.vitals(pid)
                    rss += values["VmHWM"]
                    threads += values["Threads"]
            self.peak_rss_mib = max(self.peak_rss_mib, rss / 1024)
            self.peak_threads = max(self.peak_threads, threads)
            self.processes = max(self.processes, len(pids))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def false_successes(client: Any, log: Any) -> tuple[int, int]:
    """(answers 0x0000, instances answered 0x0000 that the bucket does not hold with the data set sent)."""
    stored: dict[str, list[str]] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for item in page.get("Contents", []):
            if item["Key"].endswith(".dcm"):
                stored.setdefault(item["Key"].rsplit("/", 1)[1].removesuffix(".dcm"), []).append(item["Key"])
    acknowledged = {answer.path for answer in log.answers if answer.status == 0}

    def content(body: bytes) -> list[tuple[int, object]]:
        # storescu leaves the Dataset Trailing Padding out; everything else travels as the file holds it.
        return [(int(e.tag), e.value) for e in dcmread(BytesIO(body)) if e.tag != 0xFFFCFFFC]

    missing = 0
    for path in acknowledged:
        sent = content(path.read_bytes())
        uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        bodies = (client.get_object(Bucket=BUCKET, Key=key)["Body"].read() for key in stored.get(uid, []))
        missing += not any(content(body) == sent for body in bodies)
    return sum(1 for answer in log.answers if answer.status == 0), missing


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phase-seconds", type=float, default=20)
    parser.add_argument("--senders", type=int, default=4)
    # Each sender sends its files over and over; moto_server keeps every copy in RAM.
    parser.add_argument("--instances-per-sender", type=int, default=200)
    parser.add_argument("--rows", type=int, default=128, help="CT size: 128 x 128 x 16 bit, 32 KiB of pixel data")
    parser.add_argument("--json", type=Path, default=Path("bench/results-s3-brownout.json"))
    options = parser.parse_args()
    harness.require_dcmtk()
    started = harness.conditions()
    seconds = options.phase_seconds
    phases = [Phase("before", seconds), Phase("slow", seconds, SLOW), Phase("slowdown", seconds, SLOWDOWN)]
    phases.append(Phase("after", seconds))
    with tempfile.TemporaryDirectory(prefix="brownout-") as work:
        root = Path(work)
        files = [
            harness.write_instances(root / f"sender{n}", options.instances_per_sender, options.rows, options.rows)
            for n in range(options.senders)
        ]
        with harness.moto_server() as (endpoint, client):
            proxy = BrownoutProxy(int(endpoint.rsplit(":", 1)[1]), phases)
            port = free_port()
            env = scp_env(harness.SHIPPED_WORKERS, **FAKE_AWS, AWS_ENDPOINT_URL=proxy.endpoint)
            try:
                with serving(scp_command(port, root / "unused", "--dicom-bucket", BUCKET), port, env) as scp:
                    sampler = Sampler(scp.pid)
                    begin = proxy.start()
                    log = keep_sending(port, files, begin + proxy.duration, SENDER_DIMSE_TIMEOUT)
                    sampler.stop()
            finally:
                proxy.close()
            acknowledged, missing = false_successes(client, log)
    by_phase = rates(log, proxy)
    before = by_phase["before"]["acknowledgedPerSecond"] or 1e-9
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        **started,
        "phaseSeconds": seconds,
        "senders": options.senders,
        "instanceKiB": round(options.rows * options.rows * 2 / 1024),
        "phases": by_phase,
        "recovery": round(by_phase["after"]["acknowledgedPerSecond"] / before, 2),
        "acknowledged": acknowledged,
        "falseSuccesses": missing,
        "uploadsRefusedSlowDown": sum(proxy.refused.values()),
        "senderTimeouts": len(log.broken),
        "associations": log.associations,
        "longestAnswerSeconds": round(log.longest_answer, 2),
        "peakRssMiB": round(sampler.peak_rss_mib, 1),
        "peakThreads": sampler.peak_threads,
        "scpProcesses": sampler.processes,
        "ended": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    options.json.parent.mkdir(parents=True, exist_ok=True)
    options.json.write_text(json.dumps(result, indent=1) + "\n")
    print("| phase | seconds | acknowledged | refused (0xA700) | acknowledged/s |")
    print("|---|---|---|---|---|")
    for name, row in by_phase.items():
        cells = (name, row["seconds"], row["acknowledged"], row["refused"], row["acknowledgedPerSecond"])
        print("| " + " | ".join(map(str, cells)) + " |")
    print(json.dumps({k: v for k, v in result.items() if k != "phases"}, indent=1))
    return 0 if missing == 0 and not log.broken else 1


if __name__ == "__main__":
    sys.exit(main())
