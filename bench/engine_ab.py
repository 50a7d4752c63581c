"""This checkout's SCP against another commit's, and DCMTK's storescp, in the same minutes (not a test).

    git worktree add /tmp/baseline <commit>
    .venv/bin/python bench/engine_ab.py --baseline /tmp/baseline [--instances 600] [--maximum-pdu-size 131072]
        [--repeat 5]

docs/benchmarks.md section 9: runs hours apart differ more than the change being measured on this virtual machine,
so the receivers take turns within each round: DCMTK's storescp, the baseline's SCP and this checkout's SCP, 1
association, WORKERS=1, stores on tmpfs. Each receiver's CPU (user and system, from /proc, bench/harness.py) per
512 KiB instance; medians of ``--repeat`` rounds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import harness
from harness import Dcmtk, Receiver, ThisScp

HERE = harness.ROOT / "container"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, required=True, help="another checkout of this repository")
    parser.add_argument("--instances", type=int, default=600)
    parser.add_argument("--maximum-pdu-size", type=int, default=131072)
    parser.add_argument("--repeat", type=int, default=5)
    options = parser.parse_args(argv)
    harness.require_dcmtk()
    pdu = options.maximum_pdu_size
    receivers: dict[str, Receiver] = {
        "DCMTK storescp": Dcmtk(pdu=pdu),
        f"baseline ({options.baseline})": ThisScp(
            workers=1, pdu=pdu, env=(("PYTHONPATH", str(options.baseline.resolve() / "container")),)
        ),
        "this checkout": ThisScp(workers=1, pdu=pdu, env=(("PYTHONPATH", str(HERE)),)),
    }
    runs: dict[str, list[harness.Round]] = {name: [] for name in receivers}
    with tempfile.TemporaryDirectory(prefix="dicom-bench-ab-") as work, harness.tmpfs_folder() as store:
        paths = harness.write_instances(Path(work) / "ct512", options.instances)
        for _ in range(options.repeat):
            for name, receiver in receivers.items():
                runs[name].append(harness.receive_round(receiver, [paths], store))
    count = len(paths)
    print(f"{count} x 512 KiB, MAXIMUM_PDU_SIZE={pdu}, medians of {options.repeat}\n")
    print("| receiver | user ms | system ms | CPU ms per instance | runs |\n|---|---|---|---|---|")
    for name, results in runs.items():
        totals = [run.cpu_s / count * 1000 for run in results]
        print(
            f"| {name} | {harness.median([run.user_s for run in results]) / count * 1000:.2f} "
            f"| {harness.median([run.system_s for run in results]) / count * 1000:.2f} "
            f"| {harness.median(totals):.2f} | {', '.join(f'{total:.2f}' for total in totals)} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
