"""WORKERS: several receiving processes share the port; one dying leaves the others serving."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

from dicom_store_scp import statuses
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
    assert served_by == worker_pids  # the kernel spread the connections over both

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
