"""Benchmarks (not tests): this SCP side by side with DCMTK's storescp in the same run, the S3 path, memory, bursts.

    .venv/bin/python bench/run.py --only cpu,ingest-tmpfs,burst --repeat 5     # what `make bench` runs (issue 21)
    .venv/bin/python bench/run.py --only 9 --repeat 1 --instances 20           # a section by its number, small
    .venv/bin/python bench/run.py --list                                       # every benchmark and its section

Each benchmark fills one section of docs/benchmarks.md (``--list``); ``--only`` takes names or section numbers.
Everything runs on loopback on this machine, through bench/harness.py; every loop is bounded. Results are printed
as Markdown tables and written as JSON to ``--output`` (with the command and the load average at the start).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import harness
from harness import (
    BUCKET,
    FAKE_AWS,
    MIB,
    SHIPPED_PDU,
    Benchmark,
    Burst,
    CpuRate,
    Dcmtk,
    Memory,
    Rate,
    Receiver,
    ThisScp,
    free_port,
    median,
    scp_command,
    scp_env,
    serving,
    shard,
)

# -- 1. ingest to local disk ------------------------------------------------------------------------------------------


def _rounds(receivers: list[Receiver], shards: list[list[Path]], repeat: int, root: Path) -> dict[str, list[Any]]:
    """``repeat`` rounds, the receivers taking turns in each (so a change in the machine's load hits each alike)."""
    runs: dict[str, list[Any]] = {receiver.name: [] for receiver in receivers}
    for _ in range(repeat):
        for receiver in receivers:
            runs[receiver.name].append(harness.receive_round(receiver, shards, root))
    return runs


def _ingest(label: str, paths: list[Path], repeat: int, root: Path, receivers: dict[int, list[Receiver]]) -> list[Rate]:
    """``paths`` through 1 and 4 associations into each receiver (the first, DCMTK, is each ratio's baseline)."""
    size = harness.size_mib(paths)
    rows = []
    for associations, those in receivers.items():
        runs = _rounds(those, shard(paths, associations), repeat, root)
        for receiver in those:
            seconds = median([run.seconds for run in runs[receiver.name]])
            cpu = median([run.cpu_s for run in runs[receiver.name]])
            rate = len(paths) / seconds
            rows.append(
                Rate(label, receiver.name, associations, len(paths), seconds, rate, size / seconds, None, cpu, repeat)
            )
    harness.ratios(rows, lambda row: row.receiver.startswith("DCMTK"), lambda row: row.associations)
    return rows


def bench_ingest(options: argparse.Namespace, work: Path) -> list[Rate]:
    """Local disk (spool and storage on the work folder's disk): DCMTK never fsyncs, this SCP must."""
    paths = harness.write_instances(work / "ct512", options.instances)
    receivers: dict[int, list[Receiver]] = {
        1: [Dcmtk(), ThisScp(workers=1)],
        4: [Dcmtk(fork=True), *(ThisScp(workers=count) for count in options.workers)],
    }
    return _ingest("ingest", paths, options.repeat, work, receivers)


# -- 2. the S3 path ---------------------------------------------------------------------------------------------------


def _bench_s3(options: argparse.Namespace, work: Path, delay: float, label: str) -> list[Rate]:
    """The SCP into S3 against raw PutObject, both to moto_server; through ``delaying_proxy`` when ``delay``."""
    paths = harness.write_instances(work / "ct512-s3", options.s3_instances)
    count, size = len(paths), harness.size_mib(paths)
    rows = []
    with harness.moto_server() as (direct, client), harness.delaying_proxy(direct, delay) as proxied:
        endpoint = proxied if delay else direct
        for associations in (1, 4):
            raw = []
            for _ in range(options.repeat):
                raw.append(harness.raw_put(endpoint, paths, associations))
                if harness.empty_bucket(client) != count:
                    raise RuntimeError("raw PutObject did not store every file")
            rows.append(
                Rate(label, "raw boto3 PutObject", associations, count, median(raw), 0, 0, rounds=options.repeat)
            )
            for workers in options.workers if associations > 1 else [1]:
                timings = []
                for _ in range(options.repeat):
                    port = free_port()
                    env = scp_env(workers, **FAKE_AWS, AWS_ENDPOINT_URL=endpoint)
                    with serving(scp_command(port, work / "unused", "--dicom-bucket", BUCKET), port, env):
                        timings.append(harness.send(port, shard(paths, associations)))
                    stored = harness.empty_bucket(client)
                    if stored != count:
                        raise RuntimeError(f"SCP into S3: {stored} of {count} stored")
                name = f"this SCP into S3 (WORKERS={workers})"
                rows.append(Rate(label, name, associations, count, median(timings), 0, 0, rounds=options.repeat))
    for row in rows:
        row.instances_per_s = row.instances / row.seconds
        row.mib_per_s = size / row.seconds
    harness.ratios(rows, lambda row: row.receiver.startswith("raw"), lambda row: row.associations)
    return rows


def bench_s3(options: argparse.Namespace, work: Path) -> list[Rate]:
    return _bench_s3(options, work, 0.0, "s3")


def bench_s3_proxy(options: argparse.Namespace, work: Path) -> list[Rate]:
    return _bench_s3(options, work, 0.02, "s3-proxy-20ms")


# -- 3. memory with one large instance ------------------------------------------------------------------------------


def bench_memory(options: argparse.Namespace, work: Path) -> list[Memory]:
    """Peak RSS of WORKERS=1 receiving one instance of ``--large-frames`` 512 KiB frames (2,048: 1 GiB)."""
    [path] = harness.write_instances(work / "ct-large", 1, frames=options.large_frames)
    instance_mib = path.stat().st_size / MIB
    rows = []
    port = free_port()
    with serving(scp_command(port, work / "received-large"), port, scp_env(1)) as process:
        idle = harness.peak_rss_mib(process.pid)
        seconds = harness.send(port, [[path]])
        rows.append(Memory("memory", "local", instance_mib, seconds, harness.peak_rss_mib(process.pid), idle))
    shutil.rmtree(work / "received-large", ignore_errors=True)
    with harness.moto_server() as (endpoint, client):
        port = free_port()
        env = scp_env(1, **FAKE_AWS, AWS_ENDPOINT_URL=endpoint)
        with serving(scp_command(port, work / "unused", "--dicom-bucket", BUCKET), port, env) as process:
            idle = harness.peak_rss_mib(process.pid)
            seconds = harness.send(port, [[path]])
            rows.append(
                Memory("memory", "S3 (multipart)", instance_mib, seconds, harness.peak_rss_mib(process.pid), idle)
            )
        if harness.empty_bucket(client) != 1:
            raise RuntimeError("the large instance did not reach S3")
    path.unlink()
    return rows


# -- 4. many concurrent associations, and 9. the association burst --------------------------------------------------


def _burst(
    label: str,
    kind: str,
    storage: str,
    workers: int,
    shards: list[list[Path]],
    work: Path,
    rounds: int,
    endpoint_client: tuple[str, Any] | None = None,
) -> Burst:
    """``len(shards)`` associations at once (MAXIMUM_ASSOCIATIONS=300, the default), ``rounds`` times: storescu's
    (kind "storage") or Storage Commitment requesters (kind "commitment"); local disk, or S3 when given."""
    outcomes, stored_counts = [], []
    for _ in range(rounds):
        port = free_port()
        out = work / f"received-{label}"
        if endpoint_client is None:
            command, env = scp_command(port, out), scp_env(workers, MAXIMUM_ASSOCIATIONS="300")
        else:
            command = scp_command(port, work / "unused", "--dicom-bucket", BUCKET)
            env = scp_env(workers, **FAKE_AWS, AWS_ENDPOINT_URL=endpoint_client[0], MAXIMUM_ASSOCIATIONS="300")
        with serving(command, port, env) as process:
            if kind == "commitment":
                outcome = harness.commitment_burst(port, process.pid, shards)
            else:
                outcome = harness.concurrent_stores(port, process.pid, shards, work / f"{label}-logs")
            time.sleep(1)
        stored = harness.count_instances(out) if endpoint_client is None else harness.empty_bucket(endpoint_client[1])
        shutil.rmtree(out, ignore_errors=True)
        outcomes.append(outcome)
        stored_counts.append(stored)
    worst = min(outcomes, key=lambda outcome: (outcome.associations_ok, outcome.instances_ok))
    reasons: Counter[str] = sum((outcome.reasons for outcome in outcomes), start=Counter())
    return Burst(
        label,
        kind,
        storage,
        workers,
        len(shards),
        len(shards[0]),
        max(outcome.peak_tcp_established for outcome in outcomes),
        max(outcome.peak_held_by_scp for outcome in outcomes),
        worst.associations_ok,
        worst.instances_ok,
        min(stored_counts),
        min(outcome.reports for outcome in outcomes) if kind == "commitment" else None,
        median([outcome.seconds for outcome in outcomes]),
        rounds,
        "; ".join(f"{count}x {reason}" for reason, count in reasons.most_common(3)),
    )


def bench_associations(options: argparse.Namespace, work: Path) -> list[Burst]:
    """``--associations`` storescu associations at once, local disk and S3, each of ``--workers``, once."""
    count = options.associations
    paths = harness.write_instances(work / "ct-assoc", count * max(options.instances_per_association))
    rows: list[Burst] = []
    for each in options.instances_per_association:
        shards = [paths[number * each : (number + 1) * each] for number in range(count)]
        for workers in options.workers:
            rows.append(_burst("associations", "storage", "local", workers, shards, work, 1))
            print(harness.table(rows[-1:]).splitlines()[-1], flush=True)
    with harness.moto_server() as endpoint_client:
        for each in options.instances_per_association:
            shards = [paths[number * each : (number + 1) * each] for number in range(count)]
            for workers in options.workers:
                rows.append(_burst("associations", "storage", "S3", workers, shards, work, 1, endpoint_client))
                print(harness.table(rows[-1:]).splitlines()[-1], flush=True)
    return rows


def bench_burst(options: argparse.Namespace, work: Path) -> list[Burst]:
    """``--associations`` at once, one 512 KiB instance each, local disk, WORKERS as shipped, ``--repeat`` rounds:
    storescu associations (storage and verification), then Storage Commitment associations (store, N-ACTION, the
    N-EVENT-REPORT on the association)."""
    paths = harness.write_instances(work / "ct-burst", options.associations)
    shards = [[path] for path in paths]
    workers = options.shipped_workers
    return [_burst("burst", kind, "local", workers, shards, work, options.repeat) for kind in ("storage", "commitment")]


# -- 5. MAXIMUM_PDU_SIZE ----------------------------------------------------------------------------------------------

PDU_SIZES = (16382, 65536, 131072, 262144)


def bench_pdu(options: argparse.Namespace, work: Path) -> list[CpuRate]:
    """This SCP (WORKERS=1) at each MAXIMUM_PDU_SIZE, 1 association, local disk.

    storescu sends PDUs of what the SCP announces, capped at DCMTK's own maximum (128 KiB): the 262144 row shows
    what the SCP costs when it accepts more than this sender uses.
    """
    paths = harness.write_instances(work / "ct512", options.instances)
    rows = []
    for size in PDU_SIZES:
        receiver = ThisScp(workers=1, pdu=size)
        runs = _rounds([receiver], [paths], options.repeat, work)[receiver.name]
        rows.append(_cpu_row("pdu", "local disk", receiver.name, 1, size, len(paths), runs))
    return rows


# -- 9. this SCP and DCMTK's storescp: CPU per instance, ingest on tmpfs ----------------------------------------------


def _cpu_row(label: str, case: str, name: str, associations: int, pdu: int, count: int, runs: list[Any]) -> CpuRate:
    seconds = median([run.seconds for run in runs])
    return CpuRate(
        label,
        case,
        name,
        associations,
        pdu,
        count,
        seconds,
        count / seconds,
        None,
        median([run.cpu_s for run in runs]) / count * 1000,
        median([run.user_s for run in runs]) / count * 1000,
        median([run.system_s for run in runs]) / count * 1000,
        max(run.peak_rss_mib for run in runs),
        len(runs),
    )


# The receiver announces the PDU size and storescu sends PDUs of it (at most DCMTK's 128 KiB): 16 KiB, DCMTK's
# default maximum PDU, and 128 KiB.
CPU_PDU_SIZES = (16384, 131072)


def bench_cpu(options: argparse.Namespace, work: Path) -> list[CpuRate]:
    """CPU per 512 KiB instance of DCMTK's storescp and this SCP (WORKERS=1), 1 association, stores on tmpfs."""
    paths = harness.write_instances(work / "ct512", options.instances)
    rows: list[CpuRate] = []
    with harness.tmpfs_folder() as shm:
        for pdu in CPU_PDU_SIZES:
            receivers: list[Receiver] = [Dcmtk(pdu=pdu), ThisScp(workers=1, pdu=pdu)]
            runs = _rounds(receivers, [paths], options.repeat, shm)
            case = [
                _cpu_row("cpu", f"{pdu // 1024} KiB PDUs", r.name, 1, pdu, len(paths), runs[r.name]) for r in receivers
            ]
            harness.ratios(case, lambda row: row.receiver.startswith("DCMTK"), lambda row: row.case)
            rows += case
    return rows


def bench_ingest_tmpfs(options: argparse.Namespace, work: Path) -> list[Rate]:
    """1 and 4 associations on tmpfs (no disk, no fsync cost), this SCP as shipped (WORKERS, MAXIMUM_PDU_SIZE);
    DCMTK's storescp with --fork at 4 associations."""
    paths = harness.write_instances(work / "ct512", options.instances)
    shipped = ThisScp(workers=options.shipped_workers, pdu=SHIPPED_PDU)
    receivers: dict[int, list[Receiver]] = {1: [Dcmtk(pdu=SHIPPED_PDU), shipped]}
    receivers[4] = [Dcmtk(fork=True, pdu=SHIPPED_PDU), shipped]
    with harness.tmpfs_folder() as shm:
        return _ingest("ingest-tmpfs", paths, options.repeat, shm, receivers)


# -- 6-8: the scripts of their own ------------------------------------------------------------------------------------


def _script(name: str, *arguments: str) -> list[Any]:
    module = __import__(name)
    status = module.main(list(arguments))
    if status:
        raise RuntimeError(f"bench/{name}.py ended with {status}")
    return []


def bench_hostile_memory(options: argparse.Namespace, work: Path) -> list[Any]:
    return _script("hostile_memory", "--associations", str(options.associations))


def bench_soak(options: argparse.Namespace, work: Path) -> list[Any]:
    return _script("soak", "--duration", str(options.soak_seconds), "--output", str(work / "soak.json"))


def bench_idle(options: argparse.Namespace, work: Path) -> list[Any]:
    return _script(
        "idle_associations", "--associations", f"10,{options.associations}", "--hold", str(options.idle_seconds)
    )


def bench_pipeline_scale(options: argparse.Namespace, work: Path) -> list[Any]:
    """Issue 26: the import pipeline at HealthImaging's quotas (bench/pipeline_scale.py, JSON beside --output)."""
    output = options.output.with_name("pipeline-scale.json")
    return _script(
        "pipeline_scale",
        "--batches",
        str(options.scale_batches),
        "--instances-per-batch",
        str(options.scale_instances_per_batch),
        "--json",
        str(output),
    )


BENCHMARKS = [
    Benchmark("ingest", 1, "ingest to local disk, 1 and 4 associations, against DCMTK's storescp", bench_ingest),
    Benchmark("s3", 2, "the SCP into S3 (moto_server on loopback) against raw PutObject", bench_s3),
    Benchmark("s3-proxy", 2, "the same through a proxy adding 20 ms per request", bench_s3_proxy),
    Benchmark("memory", 3, "peak RSS receiving one 1 GiB instance, local and S3", bench_memory),
    Benchmark(
        "associations", 4, "300 storescu associations at once, local and S3, each of --workers", bench_associations
    ),
    Benchmark("pdu", 5, "CPU per instance at each MAXIMUM_PDU_SIZE", bench_pdu),
    Benchmark(
        "hostile-memory",
        6,
        "every association slot holding the largest PDU (bench/hostile_memory.py)",
        bench_hostile_memory,
    ),
    Benchmark("soak", 7, "valid and hostile traffic for --soak-seconds (bench/soak.py)", bench_soak),
    Benchmark("idle", 8, "CPU of idle associations (bench/idle_associations.py)", bench_idle),
    Benchmark("cpu", 9, "CPU per instance against DCMTK's storescp at 16 KiB and 128 KiB PDUs, tmpfs", bench_cpu),
    Benchmark(
        "ingest-tmpfs", 9, "ingest on tmpfs, 1 and 4 associations, as shipped, against DCMTK", bench_ingest_tmpfs
    ),
    Benchmark("burst", 9, "300 associations at once, storage and Storage Commitment, as shipped", bench_burst),
    Benchmark(
        "pipeline-scale",
        10,
        "batches past HealthImaging's quotas through the functions and workflow (bench/pipeline_scale.py)",
        bench_pipeline_scale,
    ),
]
# What `make bench` runs: the figures of issue 21.
DEFAULT = "cpu,ingest-tmpfs,burst"


def _numbers(text: str) -> list[int]:
    return [int(word) for word in text.split(",") if word]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--only", default=DEFAULT, help=f"names or section numbers, comma-separated, or all ({DEFAULT})"
    )
    parser.add_argument("--list", action="store_true", help="list the benchmarks with their sections and stop")
    parser.add_argument("--repeat", type=int, default=5, help="rounds per case; medians are reported (default 5)")
    parser.add_argument("--instances", type=int, default=600, help="512 KiB instances per ingest or CPU run")
    parser.add_argument("--s3-instances", type=int, default=300, help="512 KiB instances per S3 run")
    parser.add_argument("--workers", type=_numbers, default=[1, 2], help="WORKERS for sections 1, 2 and 4 (1,2)")
    parser.add_argument("--shipped-workers", type=int, default=harness.SHIPPED_WORKERS, help="WORKERS as shipped (0)")
    parser.add_argument("--associations", type=int, default=300, help="associations at once (sections 4, 6, 8, 9)")
    parser.add_argument("--instances-per-association", type=_numbers, default=[1, 5], help="section 4 (1,5)")
    parser.add_argument("--large-frames", type=int, default=2048, help="512 KiB frames of section 3's instance")
    parser.add_argument("--soak-seconds", type=float, default=600, help="section 7's duration")
    parser.add_argument("--idle-seconds", type=float, default=20, help="section 8: seconds the associations are held")
    parser.add_argument("--scale-batches", type=int, default=1000, help="section 13's batches (1000)")
    parser.add_argument("--scale-instances-per-batch", type=int, default=100, help="section 13's batch size (100)")
    parser.add_argument("--work-dir", default="", help="scratch folder (default: a new temp dir, removed after)")
    parser.add_argument("--output", type=Path, default=Path("bench/results.json"))
    options = parser.parse_args(argv)
    if options.list:
        print(harness.describe(BENCHMARKS))
        return 0
    chosen = harness.select(options.only, BENCHMARKS)
    harness.require_dcmtk()

    started = harness.conditions()
    work = Path(options.work_dir or tempfile.mkdtemp(prefix="dicom-bench-"))
    results: dict[str, list[Any]] = {}
    try:
        for benchmark in chosen:
            print(f"## {benchmark.section}. {benchmark.name}: {benchmark.measures}\n", flush=True)
            results[benchmark.name] = benchmark.run(options, work)
            print(harness.table(results[benchmark.name]), "\n", flush=True)
    finally:
        if not options.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    command = ["bench/run.py", *(argv if argv is not None else sys.argv[1:])]
    harness.write_results(options.output, results, command, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
