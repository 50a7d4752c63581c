"""The benchmarks' one harness (issue 21): data, receivers, senders, measurements, result rows and their output.

Every script under bench/ imports this module and nothing private of another script. What it holds:

- data: :func:`write_instances` (generated CT instances, unique UIDs);
- receivers: :class:`Dcmtk` (DCMTK's storescp) and :class:`ThisScp` (``python -m dicom_store_scp``), each a
  command and an environment for a free port (:func:`free_port`), started and stopped by :func:`serving`;
- senders: :func:`send` (one DCMTK storescu per association, all at once), :func:`concurrent_stores` (a burst of
  storescu processes with connection sampling) and :func:`commitment_burst` (associations that negotiate Storage
  Commitment Push Model, store, send N-ACTION and answer the N-EVENT-REPORT: a raw requester on support/wire.py,
  one thread per association, blocking sockets only, so the sender costs the shared cores little);
- measurements from /proc: :func:`cpu_seconds` (user and system, children included), :func:`peak_rss_mib`,
  :func:`vitals`, :func:`connections`;
- rounds and medians: :func:`receive_round` (start a receiver, send, check every instance stored, its CPU),
  :func:`median`;
- S3 on loopback: :func:`moto_server`, :func:`raw_put`, :func:`delaying_proxy`, :func:`empty_bucket`;
- output: the result row dataclasses, :func:`table` (Markdown) and :func:`write_results` (JSON);
- sections: :class:`Benchmark` (name, the docs/benchmarks.md section it fills, what it measures) and
  :func:`select` (``--only`` by name or by section number).

Everything runs on loopback; every subprocess and wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# The raw DICOM peer (tests/support/wire.py) and the fuzzer's cases (tests/support/fuzz.py) are shared with the tests.
sys.path.insert(0, str(ROOT / "tests"))

import boto3  # noqa: E402
import botocore.config  # noqa: E402
from dicom_store_contract import limits  # noqa: E402
from pydicom import dcmread  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402
from support import wire  # noqa: E402

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
# What the SCP and the template ship: WORKERS=0 (one receiving process per CPU) and MAXIMUM_PDU_SIZE.
SHIPPED_WORKERS = 0
SHIPPED_PDU = limits.MAXIMUM_PDU_SIZE.whole
# DCMTK's largest PDU: storescu sends PDUs of what the receiver announces, at most this.
DCMTK_MAXIMUM_PDU = 131072
# How long a sender or a receiver may take at most (loopback: minutes would mean something is stuck).
SEND_TIMEOUT = 600.0


# -- sections -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: its ``--only`` name, the docs/benchmarks.md section it fills, and what it measures."""

    name: str
    section: int
    measures: str
    run: Callable[..., list[Any]]


def select(only: str, benchmarks: Sequence[Benchmark]) -> list[Benchmark]:
    """The benchmarks ``only`` names: comma-separated names or section numbers, or ``all``."""
    words = [word.strip() for word in only.split(",") if word.strip()]
    if words == ["all"]:
        return list(benchmarks)
    chosen = []
    for word in words:
        found = [b for b in benchmarks if b.name == word or (word.isdigit() and b.section == int(word))]
        if not found:
            names = ", ".join(f"{b.name} ({b.section})" for b in benchmarks)
            raise SystemExit(f"--only {word!r}: no such benchmark or section; there are {names}")
        chosen += [b for b in found if b not in chosen]
    return chosen


def describe(benchmarks: Sequence[Benchmark]) -> str:
    return "\n".join(f"  {b.name:<18} section {b.section}: {b.measures}" for b in benchmarks)


# -- data -----------------------------------------------------------------------------------------------------------


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


def shard(paths: Sequence[Path], parts: int) -> list[list[Path]]:
    return [list(paths[index::parts]) for index in range(parts)]


def size_mib(paths: Sequence[Path]) -> float:
    return sum(path.stat().st_size for path in paths) / MIB


@contextlib.contextmanager
def tmpfs_folder(prefix: str = "dicom-bench-") -> Iterator[Path]:
    """A folder on /dev/shm (tmpfs: nothing reaches a disk, fsync costs nothing), removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir="/dev/shm"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -- receivers ------------------------------------------------------------------------------------------------------


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
    """Start ``command`` (a receiver listening on ``port``), yield it once it listens, stop it afterwards."""
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


@dataclass(frozen=True)
class Dcmtk:
    """DCMTK's storescp (``--fork``: one child process per association, as this SCP's WORKERS spread them)."""

    fork: bool = False
    pdu: int | None = None

    @property
    def name(self) -> str:
        return "DCMTK storescp" + (" --fork" if self.fork else "")

    def launch(self, port: int, out: Path) -> tuple[list[str], dict[str, str]]:
        pdu = ["-pdu", str(min(self.pdu, DCMTK_MAXIMUM_PDU))] if self.pdu else []
        return ["storescp", "-od", str(out), *pdu, *(["--fork"] if self.fork else []), str(port)], DCMTK_ENV


@dataclass(frozen=True)
class ThisScp:
    """This SCP, local storage under the given folder (``arguments``: more command-line flags)."""

    workers: int = SHIPPED_WORKERS
    pdu: int | None = None
    arguments: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()

    @property
    def name(self) -> str:
        return f"this SCP (WORKERS={self.workers})"

    def launch(self, port: int, out: Path) -> tuple[list[str], dict[str, str]]:
        pdu = ("--maximum-pdu-size", str(self.pdu)) if self.pdu else ()
        return scp_command(port, out, *pdu, *self.arguments), scp_env(self.workers, **dict(self.env))


Receiver = Dcmtk | ThisScp


# -- senders --------------------------------------------------------------------------------------------------------


def send(port: int, shards: Sequence[Sequence[Path]], timeout: float = SEND_TIMEOUT) -> float:
    """One DCMTK storescu per shard (``-R``), all at once (one association each); wall seconds until the last ends."""
    started = time.perf_counter()
    senders = [
        subprocess.Popen(
            ["storescu", "-R", "127.0.0.1", str(port), *map(str, files)],
            env=DCMTK_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for files in shards
    ]
    for sender in senders:
        _, errors = sender.communicate(timeout=timeout)
        if sender.returncode != 0:
            raise RuntimeError(f"storescu failed ({sender.returncode}): {errors.decode()[-2000:]}")
    return time.perf_counter() - started


def count_instances(folder: Path) -> int:
    """Files a receiver stored (DCMTK names them without a suffix), not counting manifests or its own records."""
    return sum(
        1
        for path in folder.rglob("*")
        if path.is_file()
        and not {".spool", "commitments"} & set(path.parts)
        and path.suffix != ".json"
        and not path.name.startswith(".")
    )


def wait_for_count(folder: Path, expected: int, timeout: float = 10) -> int:
    """How many instances ``folder`` holds once it holds ``expected`` (DCMTK's --fork children may still write)."""
    deadline = time.monotonic() + timeout
    while (found := count_instances(folder)) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


# -- measurements from /proc ------------------------------------------------------------------------------------------


def process_and_children(pid: int) -> list[int]:
    """``pid`` and its live child processes (DCMTK's --fork children, the SCP's WORKERS)."""
    pids = [pid]
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            pids += [int(child) for child in (task / "children").read_text().split()]
    return pids


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of ``pid``, its reaped children (DCMTK's --fork) and its live ones (WORKERS)."""
    tick = os.sysconf("SC_CLK_TCK")
    user = system = 0
    for each in process_and_children(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
            # utime, stime, cutime, cstime are fields 14-17 of stat(5); fields[0] here is field 3.
            user += int(fields[11]) + int(fields[13])
            system += int(fields[12]) + int(fields[14])
    return user / tick, system / tick


def cpu_seconds(pid: int) -> float:
    return sum(cpu_split(pid))


def peak_rss_mib(pid: int) -> float:
    """Peak resident memory (VmHWM) of ``pid`` and, summed, of its child processes."""
    total = 0
    for each in process_and_children(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
    return total / 1024


def vitals(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (KiB), threads and open descriptors of one process."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            values[key] = int(rest.split()[0])
    values["fds"] = len(list(Path(f"/proc/{pid}/fd").iterdir()))
    return values


def connections(port: int, pids: Sequence[int]) -> tuple[int, int]:
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


class ConnectionSampler:
    """Every 10 ms, the peak of ESTABLISHED connections to ``port`` and of those the receiver holds."""

    def __init__(self, port: int, receiver_pid: int) -> None:
        self.port, self.pids = port, process_and_children(receiver_pid)
        self.peak_established = self.peak_held = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            established, held = connections(self.port, self.pids)
            self.peak_established = max(self.peak_established, established)
            self.peak_held = max(self.peak_held, held)
            time.sleep(0.01)

    def __enter__(self) -> ConnectionSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


# -- rounds and medians -----------------------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


@dataclass
class Round:
    seconds: float
    cpu_s: float
    user_s: float
    system_s: float
    peak_rss_mib: float


def receive_round(receiver: Receiver, shards: Sequence[Sequence[Path]], root: Path, port: int | None = None) -> Round:
    """One run: ``receiver`` started on a free port storing under ``root``, the shards sent at once with storescu,
    every instance checked stored; wall seconds, the receiver's CPU over the run, its peak memory."""
    port = port or free_port()
    out = root / "received"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    expected = sum(len(files) for files in shards)
    command, env = receiver.launch(port, out)
    try:
        with serving(command, port, env) as process:
            user_before, system_before = cpu_split(process.pid)
            seconds = send(port, shards)
            received = wait_for_count(out, expected)
            user_after, system_after = cpu_split(process.pid)
            peak = peak_rss_mib(process.pid)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    if received != expected:
        raise RuntimeError(f"{receiver.name}: {received} of {expected} instances stored")
    user, system = user_after - user_before, system_after - system_before
    return Round(seconds, user + system, user, system, peak)


# -- bursts of associations -------------------------------------------------------------------------------------------


@dataclass
class BurstOutcome:
    """What a burst of associations got: how many associations and instances succeeded, and why others failed."""

    seconds: float = 0.0
    peak_tcp_established: int = 0
    peak_held_by_scp: int = 0
    associations_ok: int = 0
    instances_ok: int = 0
    reports: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    def failures(self) -> str:
        return "; ".join(f"{count}x {reason}" for reason, count in self.reasons.most_common(3))


def _storescu_failure(output: str, returncode: int | None) -> str:
    """The last error line storescu printed (E:/F:), or how it ended."""
    errors = [line for line in output.splitlines() if line.startswith(("E: ", "F: "))]
    if errors:
        return errors[-1][3:].split(":", 1)[-1].strip()[:80]
    return "timed out (killed)" if returncode is None else f"exit {returncode}, no success response"


def concurrent_stores(
    port: int, receiver_pid: int, shards: Sequence[Sequence[Path]], log_dir: Path, timeout: float = 300
) -> BurstOutcome:
    """One DCMTK storescu process per shard (one association each, storescu's full proposal of ~120 contexts), all
    started at once, while a :class:`ConnectionSampler` records the peaks.

    Separate native senders, so the sender is not the bottleneck (one Python sender with hundreds of pynetdicom
    requestor threads starved a 2-core machine with its own 1 ms polling).
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    outcome = BurstOutcome()
    with ConnectionSampler(port, receiver_pid) as sampler:
        started = time.perf_counter()
        senders = []
        for number, files in enumerate(shards):
            log = (log_dir / f"storescu-{number:03d}.log").open("w+")
            command = ["storescu", "-v", "-to", "60", "-ta", "60", "-td", "60", "127.0.0.1", str(port)]
            process = subprocess.Popen(
                [*command, *map(str, files)], env=DCMTK_ENV, stdout=log, stderr=subprocess.STDOUT
            )
            senders.append((process, log, files))
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
            outcome.instances_ok += successes
            if returncode == 0 and successes == len(files):
                outcome.associations_ok += 1
            else:
                outcome.reasons[_storescu_failure(output, returncode)] += 1
        outcome.seconds = time.perf_counter() - started
    outcome.peak_tcp_established, outcome.peak_held_by_scp = sampler.peak_established, sampler.peak_held
    return outcome


# Storage Commitment Push Model (PS3.4 Annex J) and the DIMSE command fields a requester meets.
_C_STORE_RSP = 0x8001
_N_ACTION_RSP = 0x8130
_N_EVENT_REPORT_RQ = 0x0100
_N_EVENT_REPORT_RSP = 0x8100
_COMMITMENT_STORE_CONTEXT = 1
_COMMITMENT_CONTEXT = 3


@dataclass
class _Message:
    context_id: int
    command: bytes
    data_set: bytes = b""


def _command_values(command: bytes) -> dict[int, bytes]:
    """Group 0000's elements (implicit VR little endian), by element number."""
    values, offset = {}, 0
    while offset + 8 <= len(command):
        _group, element, length = struct.unpack_from("<HHL", command, offset)
        values[element] = command[offset + 8 : offset + 8 + length]
        offset += 8 + length
    return values


def _us(values: dict[int, bytes], element: int) -> int:
    raw = values.get(element, b"")
    return int(struct.unpack("<H", raw)[0]) if len(raw) == 2 else -1


class _Requester:
    """One Storage Commitment requester on a raw connection: associate, C-STORE, N-ACTION, the report, release."""

    def __init__(self, port: int, timeout: float) -> None:
        self.peer = wire.RawPeer(port)
        self.peer.sock.settimeout(timeout)
        self.timeout = timeout
        self.send_limit = 16384
        self._message = _Message(0, b"")
        self._command_done = False

    def associate(self) -> None:
        contexts = [
            wire.presentation_context(_COMMITMENT_STORE_CONTEXT, wire.CT_IMAGE_STORAGE, wire.EXPLICIT_LE),
            wire.presentation_context(_COMMITMENT_CONTEXT, wire.STORAGE_COMMITMENT, wire.IMPLICIT_LE),
        ]
        answer = self.peer.associate(wire.associate_rq(contexts, called="STORESCP"))
        if answer is None or answer.pdu_type != wire.ASSOCIATE_AC:
            raise RuntimeError(f"association not accepted: {answer}")
        results = wire.accepted_context_ids(answer)
        if results.get(_COMMITMENT_STORE_CONTEXT) != 0 or results.get(_COMMITMENT_CONTEXT) != 0:
            raise RuntimeError(f"contexts answered {results}")
        # storescu's rule: PDUs of what the acceptor announces, at most DCMTK's maximum.
        announced = _announced_maximum(answer.body)
        self.send_limit = min(announced or DCMTK_MAXIMUM_PDU, DCMTK_MAXIMUM_PDU)

    def _send_message(self, context_id: int, command: bytes, data_set: bytes) -> None:
        self.peer.sock.sendall(wire.p_data(wire.pdv(context_id, wire.COMMAND | wire.LAST, command)))
        fragment = self.send_limit - 6
        for start in range(0, max(1, len(data_set)), fragment):
            last = wire.LAST if start + fragment >= len(data_set) else 0
            self.peer.sock.sendall(wire.p_data(wire.pdv(context_id, last, data_set[start : start + fragment])))

    def receive_message(self) -> _Message:
        """The next whole DIMSE message (its command and any data set) the SCP sends."""
        while True:
            answer = self.peer.receive(self.timeout)
            if answer is None or answer.pdu_type != wire.P_DATA:
                raise RuntimeError(f"expected P-DATA, got {answer}")
            offset = 0
            while offset + 6 <= len(answer.body):
                length, context_id, control = struct.unpack_from(">LBB", answer.body, offset)
                fragment = answer.body[offset + 6 : offset + 4 + length]
                offset += 4 + length
                message = self._message
                message.context_id = context_id
                if control & wire.COMMAND:
                    message.command += fragment
                    if control & wire.LAST:
                        self._command_done = True
                        values = _command_values(message.command)
                        if _us(values, 0x0800) == wire.NO_DATA_SET:
                            return self._take()
                else:
                    message.data_set += fragment
                    if control & wire.LAST and self._command_done:
                        return self._take()

    def _take(self) -> _Message:
        message, self._message, self._command_done = self._message, _Message(0, b""), False
        return message

    def store(self, sop_instance: str, data_set: bytes, message_id: int) -> int:
        self._send_message(_COMMITMENT_STORE_CONTEXT, wire.store_command(sop_instance, message_id=message_id), data_set)
        response = _command_values(self.receive_message().command)
        if _us(response, 0x0100) != _C_STORE_RSP:
            raise RuntimeError("expected a C-STORE-RSP")
        return _us(response, 0x0900)

    def commit(self, transaction_uid: str, references: list[tuple[str, str]], message_id: int) -> tuple[int, int]:
        """N-ACTION, then the N-EVENT-REPORT on this association (answered): (N-ACTION status, event type)."""
        request = wire.commitment_request(transaction_uid, references)
        self._send_message(_COMMITMENT_CONTEXT, wire.n_action_command(message_id), request)
        status = event_type = -1
        while status < 0 or event_type < 0:
            message = self.receive_message()
            values = _command_values(message.command)
            command_field = _us(values, 0x0100)
            if command_field == _N_ACTION_RSP:
                status = _us(values, 0x0900)
            elif command_field == _N_EVENT_REPORT_RQ:
                event_type = _us(values, 0x1002)
                answer = wire.command_set(
                    {
                        0x0002: wire.STORAGE_COMMITMENT,
                        0x0100: _N_EVENT_REPORT_RSP,
                        0x0120: _us(values, 0x0110),
                        0x0800: wire.NO_DATA_SET,
                        0x0900: 0,
                        0x1000: wire.STORAGE_COMMITMENT_INSTANCE,
                        0x1002: event_type,
                    }
                )
                self.peer.sock.sendall(wire.p_data(wire.pdv(message.context_id, wire.COMMAND | wire.LAST, answer)))
            else:
                raise RuntimeError(f"unexpected command 0x{command_field:04X}")
            if status > 0:
                break  # refused: no report follows
        return status, event_type

    def release(self) -> bool:
        self.peer.sock.sendall(wire.release_rq())
        answer = self.peer.receive(self.timeout)
        return answer is not None and answer.pdu_type == wire.RELEASE_RP

    def close(self) -> None:
        self.peer.sock.close()


def _announced_maximum(accept_body: bytes) -> int:
    """Maximum Length Received (item 0x51 in the user information) of an A-ASSOCIATE-AC body; 0 when absent."""
    offset = 68
    while offset + 4 <= len(accept_body):
        item_type, _, size = struct.unpack_from(">BBH", accept_body, offset)
        if item_type == 0x50:
            inner, end = offset + 4, offset + 4 + size
            while inner + 4 <= end:
                sub_type, _, sub_size = struct.unpack_from(">BBH", accept_body, inner)
                if sub_type == 0x51 and sub_size == 4:
                    return int(struct.unpack_from(">L", accept_body, inner + 4)[0])
                inner += 4 + sub_size
        offset += 4 + size
    return 0


@dataclass(frozen=True)
class Instance:
    """A file as a requester sends it: its SOP Instance UID and its data set bytes (after the File Meta group)."""

    sop_class: str
    sop_instance: str
    data_set: bytes

    @classmethod
    def read(cls, path: Path) -> Instance:
        from pydicom.filereader import read_file_meta_info

        meta = read_file_meta_info(path)
        data = path.read_bytes()
        # (0002,0000) UL, explicit VR little endian: tag 4 + VR 2 + length 2 + value 4 bytes.
        group_length = int.from_bytes(data[140:144], "little")
        return cls(str(meta.MediaStorageSOPClassUID), str(meta.MediaStorageSOPInstanceUID), data[144 + group_length :])


def commit_on_one_association(port: int, instances: Sequence[Instance], timeout: float) -> tuple[int, bool, str]:
    """One Storage Commitment association: ``instances`` stored, their commitment asked for (N-ACTION), the
    N-EVENT-REPORT taken and answered on it, released: (instances stored, all of it succeeded, why not)."""
    stored = 0
    requester = _Requester(port, timeout)
    try:
        requester.associate()
        for number, instance in enumerate(instances):
            status = requester.store(instance.sop_instance, instance.data_set, number + 1)
            if status != 0:
                return stored, False, f"C-STORE status 0x{status:04X}"
            stored += 1
        references = [(instance.sop_class, instance.sop_instance) for instance in instances]
        status, event_type = requester.commit(generate_uid(), references, len(instances) + 1)
        if status != 0:
            return stored, False, f"N-ACTION status 0x{status:04X}"
        if event_type != 1:
            return stored, False, f"N-EVENT-REPORT event type {event_type} (not all committed)"
        if not requester.release():
            return stored, False, "no A-RELEASE-RP"
        return stored, True, ""
    except (OSError, RuntimeError) as error:
        return stored, False, f"{type(error).__name__}: {error}"[:80]
    finally:
        requester.close()


def commitment_burst(
    port: int, receiver_pid: int, shards: Sequence[Sequence[Path]], timeout: float = 60
) -> BurstOutcome:
    """One Storage Commitment association per shard, all at once: each negotiates CT Image Storage and Storage
    Commitment Push Model, stores its shard, asks for commitment of it (N-ACTION) and waits on the association
    for the N-EVENT-REPORT (every instance committed), answers it and releases. ``associations_ok`` counts those
    that got all of it; ``reports`` the reports received."""
    data = [[Instance.read(path) for path in files] for files in shards]
    outcome = BurstOutcome()
    with ConnectionSampler(port, receiver_pid) as sampler:
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=len(data)) as pool:
            results = list(pool.map(lambda instances: commit_on_one_association(port, instances, timeout), data))
        outcome.seconds = time.perf_counter() - started
    outcome.peak_tcp_established, outcome.peak_held_by_scp = sampler.peak_established, sampler.peak_held
    for stored, succeeded, reason in results:
        outcome.instances_ok += stored
        if succeeded:
            outcome.associations_ok += 1
            outcome.reports += 1
        else:
            outcome.reasons[reason] += 1
            outcome.reports += reason.startswith(("N-EVENT-REPORT", "no A-RELEASE-RP"))
    return outcome


# -- S3 on loopback ---------------------------------------------------------------------------------------------------


def s3_client(endpoint: str, pool: int) -> Any:
    # moto accepts any credentials; these are not secrets.
    session = boto3.session.Session(
        aws_access_key_id="bench",
        aws_secret_access_key="bench",  # noqa: S106
        region_name="us-east-1",
    )
    config = botocore.config.Config(max_pool_connections=pool, retries={"mode": "standard"})
    return session.client("s3", endpoint_url=endpoint, config=config)


@contextlib.contextmanager
def moto_server() -> Iterator[tuple[str, Any]]:
    """moto_server on a free loopback port with the benchmark's bucket: (endpoint, client)."""
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


def empty_bucket(client: Any) -> int:
    """Delete everything (moto keeps objects in RAM); return how many DICOM instances there were."""
    removed = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=BUCKET, Delete={"Objects": keys})
            removed += sum(1 for key in keys if key["Key"].endswith(".dcm"))
    return removed


def raw_put(endpoint: str, paths: Sequence[Path], concurrency: int) -> float:
    """The files PUT by one boto3 client from a pool of ``concurrency`` threads; wall seconds."""
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
                    turn[0] = False
                    time.sleep(delay)
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
            turn = [True]
            for source, sink, requests in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=pump, args=(source, sink, turn, requests), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


# -- result rows and output -------------------------------------------------------------------------------------------


@dataclass
class Rate:
    """Instances through ``associations`` at once into a receiver (median of ``rounds``)."""

    benchmark: str
    receiver: str
    associations: int
    instances: int
    seconds: float
    instances_per_s: float
    mib_per_s: float
    ratio: float | None = None
    receiver_cpu_s: float | None = None
    rounds: int = 1


@dataclass
class CpuRate:
    """A receiver's CPU per instance (median of ``rounds``), user and system apart, and its rate."""

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
    user_ms_per_instance: float
    system_ms_per_instance: float
    peak_rss_mib: float
    rounds: int


@dataclass
class Memory:
    benchmark: str
    storage: str
    instance_mib: float
    seconds: float
    peak_rss_mib: float
    idle_rss_mib: float


@dataclass
class Burst:
    """``associations`` at once, ``instances_each`` each; the worst round's counts, the median's seconds."""

    benchmark: str
    kind: str
    storage: str
    workers: int
    associations: int
    instances_each: int
    peak_tcp_established: int
    peak_held_by_scp: int
    associations_ok: int
    instances_ok: int
    stored: int
    reports: int | None
    seconds: float
    rounds: int = 1
    failures: str = ""


def ratios(rows: Sequence[Any], baseline: Callable[[Any], bool], group: Callable[[Any], Any]) -> None:
    """Each row's ``ratio``: its instances per second over its group's baseline row's."""
    for row in rows:
        base = next(other for other in rows if group(other) == group(row) and baseline(other))
        row.ratio = row.instances_per_s / base.instances_per_s


def table(rows: Sequence[Any]) -> str:
    """Rows of one dataclass as a Markdown table."""
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


def conditions() -> dict[str, Any]:
    """When a run starts and the machine's load then (1-minute load average): what a recorded run states."""
    return {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "loadAverage": os.getloadavg()[0]}


def write_results(
    path: Path, results: dict[str, list[Any]], command: Sequence[str], started: dict[str, Any] | None = None
) -> None:
    """The rows of every benchmark run, by name, with the command that produced them, and when it started."""
    document = {
        "command": " ".join(command),
        **(started or conditions()),
        "ended": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **{name: [asdict(row) for row in rows] for name, rows in results.items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1) + "\n")


def require_dcmtk() -> None:
    missing = [tool for tool in ("storescu", "storescp") if shutil.which(tool) is None]
    if missing:
        raise SystemExit(f"{', '.join(missing)} not found: make dcmtk")
