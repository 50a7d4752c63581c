"""WORKERS: several receiving processes share the port (the supervisor hands each connection to the least busy);
one dying leaves the others serving."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from dicom_store_scp import server, statuses
from dicom_store_scp import workers as workers_module
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from support.scp import sample_file, storescu

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
    assert len(scp.manifests()) == 18

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
    assert failures and "in use" in failures[0]["error"]
    # With workers the supervisor binds the port: it stops before starting any.
    assert code == server.EXIT_START_FAILED
    assert not scp.events("listening") and not scp.events("workers")


def test_workers_that_keep_dying_at_start_are_given_up_on(start_scp, tmp_path):
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("")
    scp = start_scp("--workers", "2", "--storage-dir", str(not_a_folder), wait=False)
    code = scp.process.wait(timeout=60)

    # The supervisor replaced the dying workers a few times, then gave up instead of restarting them forever.
    assert code == workers_module.EXIT_WORKERS_FAILING
    [gave_up] = scp.events("workers-failing")
    assert gave_up["deaths"] == workers_module.FAST_DEATHS_ALLOWED
    assert gave_up["exitCode"] == server.EXIT_START_FAILED
    assert len(scp.events("worker-died")) >= workers_module.FAST_DEATHS_ALLOWED - 1
    assert not scp.events("listening")


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
