"""WORKERS: several receiving processes share the port (the supervisor hands each connection to the least busy);
one dying leaves the others serving."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from dicom_store_scp import server, statuses
from dicom_store_scp import workers as workers_module
from dicom_store_scp.config import load
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from support.certs import make_pki
from support.scp import free_port, sample_file, storescu

CT = sample_file("CT_small.dcm")


def _store_many(port: int, count: int) -> list[list[int]]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda _: storescu(port, CT).statuses, range(count)))


def test_two_workers_serve_and_one_dying_leaves_the_other_serving(start_scp):
    scp = start_scp("--workers", "2")
    listening = scp.wait_for_event("listening", count=2)
    worker_pids = {line["pid"] for line in listening}
    assert len(worker_pids) == 2 and scp.process.pid not in worker_pids

    assert _store_many(scp.port, 12) == [[statuses.SUCCESS]] * 12
    served_by = {line["pid"] for line in scp.wait_for_event("association", count=12)}
    assert served_by == worker_pids  # the supervisor spread the connections over both

    victim = sorted(worker_pids)[0]
    os.kill(victim, signal.SIGKILL)
    time.sleep(0.3)
    assert _store_many(scp.port, 6) == [[statuses.SUCCESS]] * 6

    [died] = scp.wait_for_event("worker-died")
    assert died["exitCode"] == -signal.SIGKILL
    replacement = {line["pid"] for line in scp.wait_for_event("listening", count=3)} - worker_pids
    assert len(replacement) == 1
    assert len(scp.wait_for_manifests(18)) == 18

    assert scp.stop() == 0


def test_workers_do_not_outlive_a_killed_supervisor(start_scp):
    scp = start_scp("--workers", "2")
    workers = {line["pid"] for line in scp.wait_for_event("listening", count=2)}

    scp.process.kill()
    scp.process.wait(timeout=10)

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{pid}") for pid in workers):
        time.sleep(0.1)
    assert not [pid for pid in workers if os.path.exists(f"/proc/{pid}")]


def test_the_association_limit_holds_across_workers(start_scp):
    scp = start_scp("--workers", "2", "--maximum-associations", "2")
    scp.wait_for_event("listening", count=2)
    holder = AE(ae_title="HOLDER")
    holder.add_requested_context(Verification)
    held = [holder.associate("127.0.0.1", scp.port) for _ in range(2)]
    try:
        assert all(assoc.is_established for assoc in held)
        time.sleep(0.6)  # each worker publishes its count at least every 0.25 s
        rejected = [storescu(scp.port, CT) for _ in range(4)]
        assert all("Local Limit Exceeded" in result.output for result in rejected)
    finally:
        for assoc in held:
            assoc.release()
    time.sleep(0.6)  # freed slots are published within 0.25 s as well
    assert storescu(scp.port, CT).statuses == [statuses.SUCCESS]


def test_cpu_quota_of_a_task_limits_the_default_worker_count(tmp_path):
    from dicom_store_scp.workers import _cgroup_cpu_quota

    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("100000 100000\n")  # a 1 vCPU task (1024 CPU units)
    assert _cgroup_cpu_quota(v2) == 1.0
    (v2 / "cpu.max").write_text("max 100000\n")
    assert _cgroup_cpu_quota(v2) is None

    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")  # 2 vCPU
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert _cgroup_cpu_quota(v1) == 2.0
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert _cgroup_cpu_quota(v1) is None
    assert _cgroup_cpu_quota(tmp_path / "none") is None


def _occupied_port() -> socket.socket:
    # Another program listening on the port.
    holder = socket.socket()
    holder.bind(("0.0.0.0", 0))
    holder.listen()
    return holder


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_in_use_stops_start_up_with_a_clear_exit(start_scp, workers):
    with _occupied_port() as holder:
        busy = str(holder.getsockname()[1])
        scp = start_scp("--workers", workers, "--scp-port", busy, wait=False)
        code = scp.process.wait(timeout=60)

    failures = scp.events("start-failed")
    assert failures and failures[0]["error"].startswith(f"SCP_PORT={busy}: port in use")
    # With workers the supervisor binds the port: it stops before starting any.
    assert code == server.EXIT_START_FAILED
    assert not scp.events("listening") and not scp.events("workers")


def test_workers_that_keep_dying_at_start_are_given_up_on(monkeypatch, tmp_path, caplog):
    """A worker that dies for a reason the supervisor could not check first (anything but the port, the storage
    folder and the TLS files, which startup.py checks) is replaced a few times, then given up on."""

    def dies_at_once(*_args, **_kwargs):
        return 5  # as serve() would after a crash of its own

    monkeypatch.setattr(workers_module, "serve", dies_at_once)  # the forked workers run this copy
    config = load(["--scp-port", str(free_port()), "--storage-dir", str(tmp_path / "storage"), "--workers", "2"])
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    try:
        with caplog.at_level("INFO", logger="dicom_store_scp.workers"):
            code = workers_module.supervise(config)
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)

    # The supervisor replaced the dying workers a few times, then gave up instead of restarting them forever.
    assert code == workers_module.EXIT_WORKERS_FAILING
    events = [getattr(record, "fields", {}) for record in caplog.records]
    [gave_up] = [fields for fields in events if fields.get("event") == "workers-failing"]
    assert gave_up["deaths"] == workers_module.FAST_DEATHS_ALLOWED
    assert gave_up["exitCode"] == 5
    assert len([f for f in events if f.get("event") == "worker-died"]) >= workers_module.FAST_DEATHS_ALLOWED - 1


def _start_failure(scp, started: float, limit: float) -> dict:
    """The one line a start-up failure gives, checked: nothing else written, exit status 1, in time."""
    code = scp.process.wait(timeout=60)
    elapsed = time.monotonic() - started
    lines = scp.log_path.read_text().splitlines()
    assert len(lines) == 1, lines
    [failure] = scp.events("start-failed")
    assert code == server.EXIT_START_FAILED == 1, lines
    assert elapsed < limit, f"{elapsed:.2f} s: {lines}"
    return failure


@pytest.fixture(scope="module")
def python_start_seconds():
    """How long the interpreter takes to import the SCP here (the machine may be busy): the time allowed is a
    second on top of it."""
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", "import dicom_store_scp.workers"], check=True, env=_env())
    return time.monotonic() - started


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def _failures(tmp_path):
    """(arguments, setting, value) of every start-up failure each worker would hit the same way."""
    pki, other = make_pki(tmp_path / "pki"), make_pki(tmp_path / "other-pki")
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    junk = tmp_path / "junk.pem"
    junk.write_text("not PEM at all\n")
    tls = ("--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(pki.server_key))
    return {
        "storage is a file": (("--storage-dir", str(a_file)), "STORAGE_DIR", str(a_file)),
        "storage cannot be created": (("--storage-dir", "/proc/storage"), "STORAGE_DIR", "/proc/storage"),
        "spool is a file": (("--spool-dir", str(a_file)), "SPOOL_DIR", str(a_file)),
        "certificate not PEM": (
            ("--tls-cert-file", str(junk), "--tls-key-file", str(pki.server_key)),
            "TLS_CERT_FILE",
            str(junk),
        ),
        "key not PEM": (
            ("--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(junk)),
            "TLS_KEY_FILE",
            str(junk),
        ),
        "key of another certificate": (
            ("--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(other.server_key)),
            "TLS_KEY_FILE",
            str(other.server_key),
        ),
        "CA file not PEM": ((*tls, "--tls-ca-file", str(junk)), "TLS_CA_FILE", str(junk)),
    }


@pytest.mark.parametrize(
    "case",
    [
        "storage is a file",
        "storage cannot be created",
        "spool is a file",
        "certificate not PEM",
        "key not PEM",
        "key of another certificate",
        "CA file not PEM",
    ],
)
@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_start_up_failure_is_one_line_naming_the_setting_and_exit_1(
    start_scp, tmp_path, python_start_seconds, case, workers
):
    args, setting, value = _failures(tmp_path)[case]
    started = time.monotonic()
    scp = start_scp("--workers", workers, *args, wait=False)
    failure = _start_failure(scp, started, python_start_seconds + 1.0)
    assert failure["setting"] == setting and failure["value"] == value
    assert failure["error"].startswith(f"{setting}={value}: ")
    # Words a person acts on, not the operating system's or OpenSSL's codes.
    assert not any(code in failure["error"] for code in ("Errno", "PEM lib", "KEY_VALUES_MISMATCH", "_ssl.c"))


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_second_scp_on_the_port_of_a_running_one_does_not_start(start_scp, python_start_seconds, workers):
    """Only the SCP's own workers share its port: a second SCP (another storage folder) is refused, every
    association reaches the first."""
    first = start_scp("--workers", workers)
    first.wait_for_event("listening", count=int(workers))
    for second_workers in ("1", "2"):
        started = time.monotonic()
        second = start_scp("--workers", second_workers, "--scp-port", str(first.port), wait=False)
        failure = _start_failure(second, started, python_start_seconds + 1.0)
        assert failure["setting"] == "SCP_PORT" and failure["value"] == str(first.port)
        assert f"SCP_PORT={first.port}: port in use" in failure["error"]

    results = [storescu(first.port, CT) for _ in range(10)]
    assert [result.statuses for result in results] == [[statuses.SUCCESS]] * 10
    assert len(first.wait_for_manifests(10)) == 10 and len(first.stored_files()) == 10
    assert not second.storage.exists() or not second.stored_files()
    assert first.stop() == 0


def test_a_senders_associations_are_spread_evenly_over_the_workers(start_scp):
    """The supervisor hands each connection to the worker holding the fewest: four at once, two each, every time
    (the kernel's SO_REUSEPORT hash put all four on one worker in one round out of six)."""
    scp = start_scp("--workers", "2")
    workers = {line["pid"] for line in scp.wait_for_event("listening", count=2)}
    caller = AE(ae_title="SPREAD")
    caller.add_requested_context(Verification)
    for round_number in range(1, 6):
        held = [caller.associate("127.0.0.1", scp.port) for _ in range(4)]
        assert all(assoc.is_established for assoc in held)
        for assoc in held:
            assoc.release()
        lines = scp.wait_for_event("association", count=4 * round_number)[-4:]
        per_worker = Counter(line["pid"] for line in lines)
        assert set(per_worker) == workers and sorted(per_worker.values()) == [2, 2], per_worker
        time.sleep(0.6)  # the released associations leave the published counts
