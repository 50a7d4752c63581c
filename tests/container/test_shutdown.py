"""SIGTERM (ECS stopping a task): stop accepting, let running associations finish, seal every batch, exit 0."""

from __future__ import annotations

import signal
import time

from dicom_store_scp import statuses
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage
from support.scp import echoscu, sample_file


def _ct_instances(count: int) -> list:
    instances = []
    for number in range(count):
        dataset = dcmread(sample_file("CT_small.dcm"))
        dataset.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.77{number + 1}"
        instances.append(dataset)
    return instances


def _associate(port: int):
    sender = AE(ae_title="MODALITY1")
    sender.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    assoc = sender.associate("127.0.0.1", port)
    assert assoc.is_established
    return assoc


def test_sigterm_lets_a_running_association_finish_and_seals_it(scp):
    first, second, third = _ct_instances(3)
    assoc = _associate(scp.port)
    assert assoc.send_c_store(first).Status == statuses.SUCCESS

    scp.process.send_signal(signal.SIGTERM)
    scp.wait_for_event("shutdown")

    assert echoscu(scp.port).returncode != 0  # no longer accepting
    assert assoc.send_c_store(second).Status == statuses.SUCCESS
    assert assoc.send_c_store(third).Status == statuses.SUCCESS
    assoc.release()
    assert scp.process.wait(timeout=30) == 0
    [manifest] = scp.manifests()
    assert manifest["endReason"] == "released"
    assert sorted(item["sopInstanceUID"] for item in manifest["instances"]) == sorted(
        ds.SOPInstanceUID for ds in (first, second, third)
    )
    assert len(scp.stored_files()) == 3


def test_an_association_still_open_after_the_grace_period_is_sealed_then_aborted(start_scp):
    scp = start_scp("--shutdown-grace-seconds", "1")
    [instance] = _ct_instances(1)
    assoc = _associate(scp.port)
    assert assoc.send_c_store(instance).Status == statuses.SUCCESS

    started = time.monotonic()
    scp.process.send_signal(signal.SIGTERM)

    assert scp.process.wait(timeout=30) == 0
    assert time.monotonic() - started < 10
    [manifest] = scp.manifests()
    assert manifest["endReason"] == "shutdown"
    assert [item["sopInstanceUID"] for item in manifest["instances"]] == [instance.SOPInstanceUID]
    deadline = time.monotonic() + 10
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.05)
    assert assoc.is_aborted
    [stopped] = scp.events("stopped")
    assert stopped["abortedAssociations"] == 1
