"""The owned receive path of this checkout against another commit's, and DCMTK, in the same minutes (not a test).

    git worktree add /tmp/baseline <commit>
    .venv/bin/python bench/engine_ab.py --baseline /tmp/baseline [--instances 600] [--maximum-pdu-size 131072]
        [--repeat 5]

bench/run.py's ``engine`` section compares receivers within one run; runs hours apart differ more than the change
being measured on this virtual machine (docs/benchmarks.md section 9). Here DCMTK's storescp, the baseline's SCP
and this checkout's SCP take turns, 1 association, WORKERS=1, stores on tmpfs, and each receiver's CPU (user and
system, from /proc) per 512 KiB instance is split into user and system time; medians of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import run as bench  # bench/run.py: data, storescu, receivers

HERE = Path(__file__).resolve().parent.parent / "container"


def _cpu(pid: int) -> tuple[float, float]:
    """(user, system) seconds of ``pid`` and its children."""
    tick = os.sysconf("SC_CLK_TCK")
    user = system = 0
    for each in bench._process_and_children(pid):
        fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        user += int(fields[11]) + int(fields[13])
        system += int(fields[12]) + int(fields[14])
    return user / tick, system / tick


def _run(container: Path | None, paths: list[Path], pdu: int, root: Path) -> tuple[float, float]:
    port = bench.free_port()
    out = root / "received"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    if container is None:
        command, env = bench._engine_receiver("DCMTK storescp", port, out, pdu, 1)
    else:
        command, env = bench._engine_receiver("this SCP (RECEIVE_ENGINE=owned, WORKERS=1)", port, out, pdu, 1)
        env = {**env, "PYTHONPATH": str(container)}
    with bench.serving(command, port, env) as process:
        user_before, system_before = _cpu(process.pid)
        bench.send(port, [paths])
        if bench._wait_for_count(out, len(paths)) != len(paths):
            raise RuntimeError(f"{container or 'DCMTK'}: not every instance was stored")
        user_after, system_after = _cpu(process.pid)
    count = len(paths)
    return (user_after - user_before) / count * 1000, (system_after - system_before) / count * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, required=True, help="another checkout of this repository")
    parser.add_argument("--instances", type=int, default=600)
    parser.add_argument("--maximum-pdu-size", type=int, default=131072)
    parser.add_argument("--repeat", type=int, default=5)
    options = parser.parse_args(argv)
    receivers = {
        "DCMTK storescp": None,
        f"baseline ({options.baseline})": options.baseline.resolve() / "container",
        "this checkout": HERE,
    }
    work = Path(tempfile.mkdtemp(prefix="dicom-bench-ab-"))
    store = Path(tempfile.mkdtemp(prefix="dicom-bench-ab-", dir="/dev/shm"))
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in receivers}
    try:
        paths = bench.write_instances(work / "ct512", options.instances)
        for _ in range(options.repeat):
            for name, container in receivers.items():
                runs[name].append(_run(container, paths, options.maximum_pdu_size, store))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(store, ignore_errors=True)
    print(f"{options.instances} x 512 KiB, MAXIMUM_PDU_SIZE={options.maximum_pdu_size}, medians of {options.repeat}\n")
    print("| receiver | user ms | system ms | CPU ms per instance | runs |\n|---|---|---|---|---|")
    for name, results in runs.items():
        totals = [user + system for user, system in results]
        print(
            f"| {name} | {statistics.median(user for user, _ in results):.2f} "
            f"| {statistics.median(system for _, system in results):.2f} | {statistics.median(totals):.2f} "
            f"| {', '.join(f'{total:.2f}' for total in totals)} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
