"""Benchmarks of issue 3 (not tests): ingest speed against DCMTK and pynetdicom, the S3 path, memory, associations.

    .venv/bin/python bench/run.py [--only ingest,ingest-tmpfs,s3,memory,associations,pdu] [--repeat 3] [--instances 600]
    .venv/bin/python bench/run.py --only engine,engine-burst,engine-memory   # issue 15: the receive engines

Everything runs on loopback on this machine; every loop is bounded. Results are printed as Markdown tables
(docs/benchmarks.md holds a recorded run with its command) and written as JSON to --output.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import boto3
import botocore.config
from dicom_store_contract import limits
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

MIB = 1024 * 1024
PYTHON = sys.executable
# Debian's DCMTK leaves Nagle's algorithm on unless told otherwise, and is ~40x slower for it.
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
}
BUCKET = "bench-dicom"


# -- data -----------------------------------------------------------------------------------------------------


def write_instances(folder: Path, count: int, rows: int = 512, columns: int = 512, frames: int = 1) -> list[Path]:
    """CT instances of ``rows`` x ``columns`` x 16 bit (512 x 512: 512 KiB of pixel data), unique UIDs."""
    folder.mkdir(parents=True, exist_ok=True)
    template = dcmread(str(get_testdata_file("CT_small.dcm", download=False)))
    template.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    template.Rows, template.Columns = rows, columns
    if frames > 1:
        template.NumberOfFrames = frames
    frame = os.urandom(rows * columns * 2)
    template.PixelData = frame * frames
    template.StudyInstanceUID = generate_uid()
    template.SeriesInstanceUID = generate_uid()
    paths = []
    for number in range(count):
        template.SOPInstanceUID = generate_uid()
        template.file_meta.MediaStorageSOPInstanceUID = template.SOPInstanceUID
        template.InstanceNumber = number + 1
        path = folder / f"{number:05d}.dcm"
        template.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


# -- processes ------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{process.args!r} did not start listening on {port}")
        time.sleep(0.05)


@contextlib.contextmanager
def serving(command: Sequence[str], port: int, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        list(command), env=env or dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port(port, process)
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def scp_command(port: int, storage: Path, *args: str) -> list[str]:
    return [
        PYTHON,
        "-m",
        "dicom_store_scp",
        "--scp-port",
        str(port),
        "--storage-dir",
        str(storage),
        "--log-level",
        "WARNING",
        *args,
    ]


def scp_env(workers: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DICOM_"))}
    # As the image runs it (container/Dockerfile); set MALLOC_ARENA_MAX in the environment to measure otherwise.
    env.setdefault("MALLOC_ARENA_MAX", "2")
    return {**env, "WORKERS": str(workers), **extra}


def send(port: int, shards: list[list[Path]], timeout: float = 600) -> float:
    """One DCMTK storescu per shard, all at once (one association each); wall seconds until the last ends."""
    started = time.perf_counter()
    senders = [
        subprocess.Popen(
            ["storescu", "-R", "127.0.0.1", str(port), *map(str, shard)],
            env=DCMTK_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for shard in shards
    ]
    for sender in senders:
        _, errors = sender.communicate(timeout=timeout)
        if sender.returncode != 0:
            raise RuntimeError(f"storescu failed ({sender.returncode}): {errors.decode()[-2000:]}")
    return time.perf_counter() - started


def shard(paths: list[Path], parts: int) -> list[list[Path]]:
    return [paths[index::parts] for index in range(parts)]


def count_instances(folder: Path) -> int:
    """Files a receiver stored (DCMTK and pynetdicom name them without a suffix), not counting manifests."""
    return sum(
        1
        for path in folder.rglob("*")
        if path.is_file() and ".spool" not in path.parts and path.suffix != ".json" and not path.name.startswith(".")
    )


def _process_and_children(pid: int) -> list[int]:
    """``pid`` and its live child processes (DCMTK's --fork children, the SCP's WORKERS)."""
    pids = [pid]
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            pids += [int(child) for child in (task / "children").read_text().split()]
    return pids


def peak_rss_mib(pid: int) -> float:
    """Peak resident memory (VmHWM) of ``pid`` and, summed, of its child processes."""
    total = 0
    for each in _process_and_children(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
    return total / 1024


def cpu_seconds(pid: int) -> float:
    """CPU time of ``pid``, its reaped children (DCMTK's --fork) and its live children (WORKERS)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for each in _process_and_children(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
            # utime, stime, cutime, cstime are fields 14-17 of stat(5); fields[0] here is field 3.
            total += sum(int(value) for value in fields[11:15])
    return total / tick


# -- 1. ingest to local disk ----------------------------------------------------------------------------------


@dataclass
class Rate:
    benchmark: str
    receiver: str
    associations: int
    instances: int
    seconds: float
    instances_per_s: float
    mib_per_s: float
    ratio: float | None = None
    receiver_cpu_s: float | None = None


def _receivers(workers: Sequence[int], parallel: bool) -> list[str]:
    return (
        ["DCMTK storescp" + (" --fork" if parallel else "")]
        + [f"this SCP (WORKERS={count})" for count in workers]
        + ["pynetdicom storescp app"]
    )


def _receiver(name: str, port: int, out: Path) -> tuple[list[str], dict[str, str]]:
    if name.startswith("DCMTK"):
        return ["storescp", "-od", str(out)] + (["--fork"] if "--fork" in name else []) + [str(port)], DCMTK_ENV
    if name.startswith("pynetdicom"):
        return [PYTHON, "-m", "pynetdicom", "storescp", str(port), "-od", str(out)], dict(os.environ)
    workers = int(name.split("WORKERS=")[1].rstrip(")"))
    return scp_command(port, out), scp_env(workers)


def bench_ingest(
    work: Path,
    instances: int,
    repeat: int,
    workers: Sequence[int],
    received_root: Path | None = None,
    label: str = "ingest",
    pynetdicom_app: bool = True,
) -> list[Rate]:
    """``instances`` 512 KiB instances through 1 and 4 associations into each receiver.

    ``received_root`` is where the receivers store (and the SCP spools); default the work folder (disk). With
    /dev/shm nothing reaches the disk, so fsync costs nothing: a secondary comparison, labelled ``label``.
    """
    paths = write_instances(work / "ct512", instances)
    size = sum(path.stat().st_size for path in paths)
    results = []
    for associations in (1, 4):
        workers_here = workers if associations > 1 else [1]
        names = _receivers(workers_here, associations > 1)
        for name in names if pynetdicom_app else names[:-1]:
            timings, cpu = [], []
            for _ in range(repeat):
                port = free_port()
                out = (received_root or work) / "received"
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                command, env = _receiver(name, port, out)
                with serving(command, port, env) as process:
                    before = cpu_seconds(process.pid)
                    seconds = send(port, shard(paths, associations))
                    # DCMTK's forked children may still be writing their last file when storescu returns.
                    received = _wait_for_count(out, instances)
                    cpu.append(cpu_seconds(process.pid) - before)
                if received != instances:
                    raise RuntimeError(f"{name}: {received} of {instances} stored")
                timings.append(seconds)
            seconds = statistics.median(timings)
            results.append(
                Rate(
                    label,
                    name,
                    associations,
                    instances,
                    seconds,
                    instances / seconds,
                    size / MIB / seconds,
                    receiver_cpu_s=statistics.median(cpu),
                )
            )
    for associations in (1, 4):
        dcmtk = next(r for r in results if r.associations == associations and r.receiver.startswith("DCMTK"))
        for result in results:
            if result.associations == associations:
                result.ratio = result.instances_per_s / dcmtk.instances_per_s
    return results


def _wait_for_count(folder: Path, expected: int, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while (found := count_instances(folder)) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


# -- 2. the S3 path -------------------------------------------------------------------------------------------


@contextlib.contextmanager
def moto_server() -> Iterator[tuple[str, Any]]:
    port = free_port()
    process = subprocess.Popen(
        [PYTHON, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, process)
        endpoint = f"http://127.0.0.1:{port}"
        client = s3_client(endpoint, 16)
        client.create_bucket(Bucket=BUCKET)
        yield endpoint, client
    finally:
        process.kill()
        process.wait()


def s3_client(endpoint: str, pool: int) -> Any:
    # moto accepts any credentials; these are not secrets.
    session = boto3.session.Session(
        aws_access_key_id="bench",
        aws_secret_access_key="bench",  # noqa: S106
        region_name="us-east-1",
    )
    config = botocore.config.Config(max_pool_connections=pool, retries={"mode": "standard"})
    return session.client("s3", endpoint_url=endpoint, config=config)


def empty_bucket(client: Any) -> int:
    """Delete everything (moto keeps objects in RAM); return how many DICOM instances there were."""
    removed = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=BUCKET, Delete={"Objects": keys})
            removed += sum(1 for key in keys if key["Key"].endswith(".dcm"))
    return removed


def raw_put(endpoint: str, paths: list[Path], concurrency: int) -> float:
    client = s3_client(endpoint, concurrency)

    def put(path: Path) -> None:
        with path.open("rb") as body:
            client.put_object(Bucket=BUCKET, Key=f"raw/{path.name}", Body=body, ServerSideEncryption="AES256")

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(put, paths))
    return time.perf_counter() - started


@contextlib.contextmanager
def delaying_proxy(endpoint: str, delay: float) -> Iterator[str]:
    """A TCP proxy in front of ``endpoint`` that holds each HTTP request ``delay`` seconds before passing it on.

    A request is the first bytes a client sends after the previous response began (an interim "100 Continue" does
    not count): about what an in-region S3 PUT adds in latency over loopback moto_server.
    """
    target = int(endpoint.rsplit(":", 1)[1])
    listener = socket.create_server(("127.0.0.1", 0), backlog=256)

    def pump(source: socket.socket, sink: socket.socket, turn: list[bool], requests: bool) -> None:
        try:
            while data := source.recv(65536):
                if requests and turn[0]:
                    time.sleep(delay)
                    turn[0] = False
                elif not requests and not data.startswith(b"HTTP/1.1 100"):
                    turn[0] = True
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    def accept() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", target))
            for each in (client, upstream):
                each.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            turn = [True]
            threading.Thread(target=pump, args=(client, upstream, turn, True), daemon=True).start()
            threading.Thread(target=pump, args=(upstream, client, turn, False), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


def bench_s3(
    work: Path, instances: int, repeat: int, workers: Sequence[int], delay: float = 0.0, label: str = "s3"
) -> list[Rate]:
    """The SCP into S3 against raw PutObject, both to moto_server; through ``delaying_proxy`` when ``delay``."""
    paths = write_instances(work / "ct512-s3", instances)
    size = sum(path.stat().st_size for path in paths)
    results = []
    with moto_server() as (direct, client), delaying_proxy(direct, delay) as proxied:
        endpoint = proxied if delay else direct
        for associations in (1, 4):
            raw = []
            for _ in range(repeat):
                raw.append(raw_put(endpoint, paths, associations))
                if empty_bucket(client) != instances:
                    raise RuntimeError("raw PutObject did not store every file")
            raw_seconds = statistics.median(raw)
            raw_rate = Rate(label, "raw boto3 PutObject", associations, instances, raw_seconds, 0, 0)
            results.append(raw_rate)
            for count in workers if associations > 1 else [1]:
                timings = []
                for _ in range(repeat):
                    port = free_port()
                    env = scp_env(count, **FAKE_AWS, AWS_ENDPOINT_URL=endpoint)
                    with serving(scp_command(port, work / "unused", "--dicom-bucket", BUCKET), port, env):
                        timings.append(send(port, shard(paths, associations)))
                    stored = empty_bucket(client)
                    if stored != instances:
                        raise RuntimeError(f"SCP into S3: {stored} of {instances} stored")
                seconds = statistics.median(timings)
                results.append(
                    Rate(label, f"this SCP into S3 (WORKERS={count})", associations, instances, seconds, 0, 0)
                )
    for result in results:
        result.instances_per_s = result.instances / result.seconds
        result.mib_per_s = size / MIB / result.seconds
    for associations in (1, 4):
        raw_rate = next(r for r in results if r.associations == associations and r.receiver.startswith("raw"))
        for result in results:
            if result.associations == associations:
                result.ratio = result.instances_per_s / raw_rate.instances_per_s
    return results


# -- 3. memory with one 1 GiB instance ------------------------------------------------------------------------


@dataclass
class Memory:
    benchmark: str
    storage: str
    instance_mib: float
    seconds: float
    peak_rss_mib: float
    idle_rss_mib: float


def bench_memory(work: Path) -> list[Memory]:
    # 2,048 frames of 512 x 512 x 16 bit: 1 GiB of pixel data in one instance.
    [path] = write_instances(work / "ct1g", 1, frames=2048)
    size_mib = path.stat().st_size / MIB
    results = []
    port = free_port()
    with serving(scp_command(port, work / "received-1g"), port, scp_env(1)) as process:
        idle = peak_rss_mib(process.pid)
        seconds = send(port, [[path]])
        results.append(Memory("memory", "local", size_mib, seconds, peak_rss_mib(process.pid), idle))
    shutil.rmtree(work / "received-1g", ignore_errors=True)
    with moto_server() as (endpoint, client):
        port = free_port()
        env = scp_env(1, **FAKE_AWS, AWS_ENDPOINT_URL=endpoint)
        with serving(scp_command(port, work / "unused", "--dicom-bucket", BUCKET), port, env) as process:
            idle = peak_rss_mib(process.pid)
            seconds = send(port, [[path]])
            results.append(Memory("memory", "S3 (multipart)", size_mib, seconds, peak_rss_mib(process.pid), idle))
        if empty_bucket(client) != 1:
            raise RuntimeError("the 1 GiB instance did not reach S3")
    path.unlink()
    return results


# -- 5. MAXIMUM_PDU_SIZE --------------------------------------------------------------------------------------


@dataclass
class PduSize:
    benchmark: str
    maximum_pdu_size: int
    instances: int
    seconds: float
    instances_per_s: float
    receiver_cpu_s: float
    cpu_ms_per_instance: float
    peak_rss_mib: float


PDU_SIZES = (16382, 65536, 131072, 262144)


def bench_pdu(work: Path, instances: int, repeat: int) -> list[PduSize]:
    """The SCP (WORKERS=1) at each MAXIMUM_PDU_SIZE, 1 association of ``instances`` 512 KiB instances.

    storescu sends PDUs up to the size the SCP announces, capped at DCMTK's own maximum (128 KiB): the 262144
    row shows what the SCP costs when it accepts more than this sender uses.
    """
    paths = write_instances(work / "ct512", instances)
    results = []
    for size in PDU_SIZES:
        timings, cpu, rss = [], [], []
        for _ in range(repeat):
            port = free_port()
            out = work / "received-pdu"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            command = scp_command(port, out, "--maximum-pdu-size", str(size))
            with serving(command, port, scp_env(1)) as process:
                before = cpu_seconds(process.pid)
                timings.append(send(port, [paths]))
                received = _wait_for_count(out, instances)
                cpu.append(cpu_seconds(process.pid) - before)
                rss.append(peak_rss_mib(process.pid))
            if received != instances:
                raise RuntimeError(f"MAXIMUM_PDU_SIZE={size}: {received} of {instances} stored")
        seconds, cpu_s = statistics.median(timings), statistics.median(cpu)
        results.append(
            PduSize("pdu", size, instances, seconds, instances / seconds, cpu_s, cpu_s / instances * 1000, max(rss))
        )
    return results


# -- 6. the receive engines side by side (issue 15) -------------------------------------------------------------


@dataclass
class EngineRate:
    benchmark: str
    case: str
    receiver: str
    associations: int
    maximum_pdu_size: int
    instances: int
    seconds: float
    instances_per_s: float
    ratio: float | None
    receiver_cpu_ms_per_instance: float


# Receivers compared: DCMTK's storescp, and this SCP with each RECEIVE_ENGINE.
ENGINES = ("owned", "pynetdicom")


def _engine_receiver(name: str, port: int, out: Path, pdu: int, workers: int) -> tuple[list[str], dict[str, str]]:
    if name.startswith("DCMTK"):
        fork = ["--fork"] if "--fork" in name else []
        return ["storescp", "-od", str(out), "-pdu", str(min(pdu, 131072)), *fork, str(port)], DCMTK_ENV
    engine = name.split("RECEIVE_ENGINE=")[1].split(",")[0]
    command = scp_command(port, out, "--maximum-pdu-size", str(pdu))
    return command, scp_env(workers, RECEIVE_ENGINE=engine)


def _engine_run(
    name: str, paths: list[Path], associations: int, pdu: int, workers: int, root: Path
) -> tuple[float, float]:
    """One run: (wall seconds, receiver CPU seconds) for ``paths`` over ``associations`` into ``root``."""
    port = free_port()
    out = root / "received-engine"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    command, env = _engine_receiver(name, port, out, pdu, workers)
    with serving(command, port, env) as process:
        before = cpu_seconds(process.pid)
        seconds = send(port, shard(paths, associations))
        received = _wait_for_count(out, len(paths))
        cpu = cpu_seconds(process.pid) - before
    shutil.rmtree(out, ignore_errors=True)
    if received != len(paths):
        raise RuntimeError(f"{name}: {received} of {len(paths)} stored")
    return seconds, cpu


def bench_engine(work: Path, instances: int, repeat: int, shipped_workers: int) -> list[EngineRate]:
    """The receive engines against DCMTK's storescp, every store on tmpfs (/dev/shm), so engines are compared.

    - ``cpu``: receiver CPU per 512 KiB instance, 1 association, WORKERS=1, at 128 KiB and 16 KiB PDUs (storescu
      sends PDUs up to what the receiver announces; DCMTK's own cap is 128 KiB);
    - ``ingest``: 1 and 4 associations at the shipped MAXIMUM_PDU_SIZE and WORKERS (DCMTK with --fork for 4).

    Runs alternate between receivers (round robin) so that a change in machine load hits each alike.
    """
    paths = write_instances(work / "ct512", instances)
    shm = Path(tempfile.mkdtemp(prefix="dicom-bench-engine-", dir="/dev/shm"))
    results: list[EngineRate] = []
    shipped_pdu = limits.MAXIMUM_PDU_SIZE.whole  # what the SCP and the template ship
    cases = [("cpu", 1, 131072, 1), ("cpu", 1, 16384, 1), ("ingest", 1, shipped_pdu, shipped_workers)]
    cases.append(("ingest", 4, shipped_pdu, shipped_workers))
    try:
        for case, associations, pdu, workers in cases:
            dcmtk = "DCMTK storescp" + (" --fork" if associations > 1 else "")
            names = [dcmtk] + [f"this SCP (RECEIVE_ENGINE={engine}, WORKERS={workers})" for engine in ENGINES]
            runs: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
            for _ in range(repeat):
                for name in names:
                    runs[name].append(_engine_run(name, paths, associations, pdu, workers, shm))
            rows = []
            for name in names:
                seconds = statistics.median(run[0] for run in runs[name])
                cpu = statistics.median(run[1] for run in runs[name])
                rows.append(
                    EngineRate(
                        "engine",
                        case,
                        name,
                        associations,
                        pdu,
                        instances,
                        seconds,
                        instances / seconds,
                        None,
                        cpu / instances * 1000,
                    )
                )
            for row in rows:
                row.ratio = row.instances_per_s / rows[0].instances_per_s
            results += rows
            print(table(rows), "\n", flush=True)
    finally:
        shutil.rmtree(shm, ignore_errors=True)
    return results


def bench_engine_burst(work: Path, count: int) -> list[Associations]:
    """``count`` associations at once (one 512 KiB instance each, local disk, shipped WORKERS), per engine."""
    paths = write_instances(work / "ct-burst", count)
    shards = [[path] for path in paths]
    results = []
    for engine in ENGINES:
        port = free_port()
        out = work / f"received-burst-{engine}"
        env = scp_env(0, MAXIMUM_ASSOCIATIONS="300", RECEIVE_ENGINE=engine)
        with serving(scp_command(port, out), port, env) as process:
            measured = concurrent_stores(port, process.pid, shards, work / "burst-logs")
            time.sleep(1)
        established, held, associations_ok, instances_ok, seconds, failures = measured
        stored = count_instances(out)
        results.append(
            Associations(
                "engine-burst",
                f"local, RECEIVE_ENGINE={engine}",
                0,
                count,
                1,
                established,
                held,
                associations_ok,
                instances_ok,
                stored,
                seconds,
                failures,
            )
        )
        shutil.rmtree(out, ignore_errors=True)
    return results


def bench_engine_memory(work: Path) -> list[Memory]:
    """Peak RSS of WORKERS=1 receiving one 1 GiB instance, local disk, per engine."""
    [path] = write_instances(work / "ct1g", 1, frames=2048)
    size_mib = path.stat().st_size / MIB
    results = []
    for engine in ENGINES:
        port = free_port()
        out = work / f"received-1g-{engine}"
        with serving(scp_command(port, out), port, scp_env(1, RECEIVE_ENGINE=engine)) as process:
            idle = peak_rss_mib(process.pid)
            seconds = send(port, [[path]])
            results.append(
                Memory(
                    "engine-memory",
                    f"local, RECEIVE_ENGINE={engine}",
                    size_mib,
                    seconds,
                    peak_rss_mib(process.pid),
                    idle,
                )
            )
        shutil.rmtree(out, ignore_errors=True)
    path.unlink()
    return results


# -- 4. many concurrent associations --------------------------------------------------------------------------


@dataclass
class Associations:
    benchmark: str
    storage: str
    workers: int
    associations: int
    instances_each: int
    peak_tcp_established: int
    peak_held_by_scp: int
    associations_ok: int
    instances_ok: int
    stored: int
    seconds: float
    failures: str = ""


def _connections(port: int, pids: Sequence[int]) -> tuple[int, int]:
    """Server-side connections on ``port``: (ESTABLISHED in the kernel, of those held open by ``pids``).

    The kernel counts a connection as ESTABLISHED while it still waits in the listen queue; the second number
    counts only connections the receiver has accepted (its file descriptors point at the socket's inode) and
    not yet closed, which excludes its own connections elsewhere (to S3, between workers).
    """
    suffix = f":{port:04X}"
    inodes = set()
    for table_path in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table_path) as table_file:
            next(table_file)
            for line in table_file:
                fields = line.split()
                if fields[1].endswith(suffix) and fields[3] == "01":
                    inodes.add(f"socket:[{fields[9]}]")
    held = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(fd.path) in inodes:
                        held += 1
    return len(inodes), held


def _failure_reason(output: str, returncode: int | None) -> str:
    """The last error line storescu printed (E:/F:), or how it ended."""
    errors = [line for line in output.splitlines() if line.startswith(("E: ", "F: "))]
    if errors:
        return errors[-1][3:].split(":", 1)[-1].strip()[:80]
    return "timed out (killed)" if returncode is None else f"exit {returncode}, no success response"


def concurrent_stores(
    port: int, receiver_pid: int, shards: list[list[Path]], log_dir: Path, timeout: float = 300
) -> tuple[int, int, int, int, float, str]:
    """One DCMTK storescu process per shard (one association each), all started at once.

    Separate native senders, so the sender is not the bottleneck (one Python sender with hundreds of pynetdicom
    requestor threads starved a 2-core machine with its own 1 ms polling). A sampler thread records, every
    10 ms, the peak of ESTABLISHED connections to the port (the kernel counts connections still waiting in the
    listen queue too) and the peak of those the receiver's processes hold (accepted, not yet closed).

    Returns (peak established, peak held by the receiver, associations whose every instance succeeded,
    instances acknowledged with success, seconds, the commonest failure reasons).
    """
    pids = _process_and_children(receiver_pid)
    peak_established = peak_held = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak_established, peak_held
        while not stop.is_set():
            established, held = _connections(port, pids)
            peak_established = max(peak_established, established)
            peak_held = max(peak_held, held)
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    log_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    senders = []
    for number, files in enumerate(shards):
        log = (log_dir / f"storescu-{number:03d}.log").open("w+")
        command = ["storescu", "-v", "-to", "60", "-ta", "60", "-td", "60", "127.0.0.1", str(port), *map(str, files)]
        senders.append((subprocess.Popen(command, env=DCMTK_ENV, stdout=log, stderr=subprocess.STDOUT), log, files))
    associations_ok = instances_ok = 0
    reasons: Counter[str] = Counter()
    deadline = time.monotonic() + timeout
    for sender, log, files in senders:
        try:
            returncode: int | None = sender.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            sender.kill()
            sender.wait()
            returncode = None
        log.seek(0)
        output = log.read()
        log.close()
        successes = output.count("Received Store Response (Success)")
        instances_ok += successes
        if returncode == 0 and successes == len(files):
            associations_ok += 1
        else:
            reasons[_failure_reason(output, returncode)] += 1
    seconds = time.perf_counter() - started
    stop.set()
    sampler.join()
    failures = "; ".join(f"{count}x {reason}" for reason, count in reasons.most_common(3))
    return peak_established, peak_held, associations_ok, instances_ok, seconds, failures


def bench_associations(
    work: Path, count: int, per_association: Sequence[int], workers: Sequence[int]
) -> list[Associations]:
    """``count`` associations at once against MAXIMUM_ASSOCIATIONS=300 (the default), local disk and S3."""
    # Distinct SOP Instance UIDs, so the stored count says whether every acknowledged instance is there.
    paths = write_instances(work / "ct-assoc", count * max(per_association))
    results: list[Associations] = []
    print("| " + " | ".join(field.name for field in fields(Associations)) + " |", flush=True)

    def row(storage: str, worker_count: int, each: int, measured: tuple[Any, ...], stored: int) -> Associations:
        established, held, associations_ok, instances_ok, seconds, failures = measured
        return Associations(
            "associations",
            storage,
            worker_count,
            count,
            each,
            established,
            held,
            associations_ok,
            instances_ok,
            stored,
            seconds,
            failures,
        )

    for each in per_association:
        shards = [paths[number * each : (number + 1) * each] for number in range(count)]
        for worker_count in workers:
            port = free_port()
            out = work / f"received-assoc-{worker_count}"
            env = scp_env(worker_count, MAXIMUM_ASSOCIATIONS="300")
            with serving(scp_command(port, out), port, env) as process:
                measured = concurrent_stores(port, process.pid, shards, work / "assoc-logs")
                time.sleep(1)
            results.append(row("local", worker_count, each, measured, count_instances(out)))
            print(table(results[-1:]).splitlines()[-1], flush=True)
            shutil.rmtree(out, ignore_errors=True)
    with moto_server() as (endpoint, client):
        for each in per_association:
            shards = [paths[number * each : (number + 1) * each] for number in range(count)]
            for worker_count in workers:
                port = free_port()
                env = scp_env(worker_count, **FAKE_AWS, AWS_ENDPOINT_URL=endpoint, MAXIMUM_ASSOCIATIONS="300")
                with serving(scp_command(port, work / "unused", "--dicom-bucket", BUCKET), port, env) as process:
                    measured = concurrent_stores(port, process.pid, shards, work / "assoc-logs")
                    time.sleep(1)
                results.append(row("S3", worker_count, each, measured, empty_bucket(client)))
                print(table(results[-1:]).splitlines()[-1], flush=True)
    return results


# -- report ---------------------------------------------------------------------------------------------------


def table(rows: list[Any]) -> str:
    if not rows:
        return ""
    columns = list(asdict(rows[0]))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for value in asdict(row).values():
            cells.append(f"{value:.2f}" if isinstance(value, float) else str(value if value is not None else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--only",
        default="ingest,ingest-tmpfs,s3,memory,associations,pdu,engine,engine-burst,engine-memory",
        help="engine: the receive engines and DCMTK on tmpfs; engine-burst, engine-memory: 300 associations, 1 GiB;"
        " s3-proxy: the S3 case through a proxy adding 20 ms per request",
    )
    parser.add_argument("--shipped-workers", type=int, default=0, help="WORKERS for the engine ingest cases")
    parser.add_argument("--instances", type=int, default=600, help="512 KiB instances per ingest run")
    parser.add_argument("--s3-instances", type=int, default=300, help="512 KiB instances per S3 run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; the median is reported")
    parser.add_argument("--workers", default="1,2", help="WORKERS values for the 4-association cases")
    parser.add_argument("--associations", type=int, default=300)
    parser.add_argument(
        "--instances-per-association",
        default="1,5",
        help="instances each of the concurrent associations stores (5 makes each association last longer)",
    )
    parser.add_argument("--work-dir", default="", help="scratch folder (default: a new temp dir, removed after)")
    parser.add_argument("--output", default="bench/results.json")
    options = parser.parse_args(argv)
    chosen = set(options.only.split(","))
    workers = [int(w) for w in options.workers.split(",")]
    for tool in ("storescu", "storescp"):
        if shutil.which(tool) is None:
            print(f"{tool} not found: make dcmtk", file=sys.stderr)
            return 2

    work = Path(options.work_dir or tempfile.mkdtemp(prefix="dicom-bench-"))
    results: dict[str, list[Any]] = {}
    try:
        if "ingest" in chosen:
            results["ingest"] = bench_ingest(work, options.instances, options.repeat, workers)
            print(table(results["ingest"]), "\n", flush=True)
        if "ingest-tmpfs" in chosen:
            shm = Path(tempfile.mkdtemp(prefix="dicom-bench-", dir="/dev/shm"))
            try:
                results["ingest-tmpfs"] = bench_ingest(
                    work, options.instances, options.repeat, workers, shm, "ingest-tmpfs", pynetdicom_app=False
                )
            finally:
                shutil.rmtree(shm, ignore_errors=True)
            print(table(results["ingest-tmpfs"]), "\n", flush=True)
        if "s3" in chosen:
            results["s3"] = bench_s3(work, options.s3_instances, options.repeat, workers)
            print(table(results["s3"]), "\n", flush=True)
        if "s3-proxy" in chosen:
            results["s3-proxy"] = bench_s3(
                work, options.s3_instances, options.repeat, workers, delay=0.02, label="s3-proxy-20ms"
            )
            print(table(results["s3-proxy"]), "\n", flush=True)
        if "memory" in chosen:
            results["memory"] = bench_memory(work)
            print(table(results["memory"]), "\n", flush=True)
        if "pdu" in chosen:
            results["pdu"] = bench_pdu(work, options.instances, options.repeat)
            print(table(results["pdu"]), "\n", flush=True)
        if "engine" in chosen:
            results["engine"] = bench_engine(work, options.instances, options.repeat, options.shipped_workers)
        if "engine-burst" in chosen:
            results["engine-burst"] = bench_engine_burst(work, options.associations)
            print(table(results["engine-burst"]), "\n", flush=True)
        if "engine-memory" in chosen:
            results["engine-memory"] = bench_engine_memory(work)
            print(table(results["engine-memory"]), "\n", flush=True)
        if "associations" in chosen:
            per_association = [int(n) for n in options.instances_per_association.split(",")]
            results["associations"] = bench_associations(work, options.associations, per_association, workers)
            print(table(results["associations"]), "\n", flush=True)
    finally:
        if not options.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    Path(options.output).write_text(
        json.dumps({name: [asdict(row) for row in rows] for name, rows in results.items()}, indent=1)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
