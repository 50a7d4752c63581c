"""CPU and memory of one receiving process holding established associations that send nothing (issue 14).

    .venv/bin/python bench/idle_associations.py [--associations 10,250] [--hold 20]

Not a test: the measurement behind the association target tracking policy (template_gen/monitoring.py). Modalities
that keep associations open (slow links, long studies, senders that never release) fill MaximumAssociations while
the task's CPU stays low: if they cost little CPU, CPU target tracking alone never adds a task and new senders are
rejected (local limit exceeded). One SCP process (WORKERS=1) on loopback; pynetdicom peers associate and wait.

docs/benchmarks.md section 8 (`bench/run.py --only idle` runs it too).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from harness import cpu_seconds, free_port, scp_command, scp_env, serving, vitals
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]


def resident_mib(pid: int) -> int:
    return vitals(pid)["VmRSS"] // 1024


def measure(associations: int, hold: float) -> str:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="idle-associations-") as work:
        env = scp_env(1, MAXIMUM_ASSOCIATIONS=str(associations + 50), NETWORK_TIMEOUT="600", ACSE_TIMEOUT="120")
        with serving(scp_command(port, Path(work)), port, env) as process:
            peer = AE(ae_title="IDLE")
            peer.add_requested_context(CTImageStorage)
            peer.network_timeout = 600
            held = []
            try:
                for _ in range(associations):
                    assoc = peer.associate("127.0.0.1", port)
                    assert assoc.is_established, "association not accepted"
                    held.append(assoc)
                before, started = cpu_seconds(process.pid), time.monotonic()
                time.sleep(hold)
                used = cpu_seconds(process.pid) - before
                share = 100 * used / (time.monotonic() - started)
                return f"| {associations} | {hold:.0f} | {share:.1f} | {resident_mib(process.pid)} |"
            finally:
                for assoc in held:
                    assoc.abort()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--associations", default="10,250", help="comma list of idle associations to hold")
    parser.add_argument("--hold", type=float, default=20, help="seconds to measure while they are held")
    args = parser.parse_args(argv)
    print("| idle associations | seconds | CPU of one core, % | resident MiB |")
    print("|---|---|---|---|")
    for count in (int(word) for word in args.associations.split(",")):
        print(measure(count, args.hold), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
