"""pynetdicom_threads.py is written against one pynetdicom minor version: pinned, checked at start-up, and the SCP
falls back to pynetdicom's stock threads (with one warning) when the check fails."""

from __future__ import annotations

import configparser
import logging
import threading
from pathlib import Path

import pynetdicom
import pytest
from dicom_store_scp import pynetdicom_threads, server, statuses
from dicom_store_scp.config import load
from packaging.requirements import Requirement
from pynetdicom import evt
from pynetdicom.dul import DULServiceProvider
from support.scp import free_port, sample_file, storescu

SETUP_CFG = Path(__file__).parents[2] / "setup.cfg"


@pytest.fixture(autouse=True)
def fresh_check():
    pynetdicom_threads.supported.cache_clear()
    yield
    pynetdicom_threads.supported.cache_clear()


def test_setup_cfg_pins_the_minor_version_the_module_was_written_for():
    parser = configparser.ConfigParser()
    parser.read(SETUP_CFG)
    [pin] = [
        Requirement(line) for line in parser["options"]["install_requires"].split("\n") if line.startswith("pynetdicom")
    ]
    major, minor = map(int, pynetdicom_threads.WRITTEN_FOR.split("."))
    assert pin.specifier.contains(f"{major}.{minor}.99")
    assert not pin.specifier.contains(f"{major}.{minor + 1}.0")
    assert pynetdicom_threads.supported()  # the installed (locked) pynetdicom passes the check


def test_a_missing_private_name_is_reported(monkeypatch):
    monkeypatch.delattr(DULServiceProvider, "_is_transport_event")
    assert pynetdicom_threads.missing_names() == ["assoc.dul._is_transport_event"]


def test_another_pynetdicom_falls_back_to_stock_threads_with_one_warning(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(pynetdicom, "__version__", "3.1.0")
    config = load(["--scp-port", str(free_port()), "--storage-dir", str(tmp_path / "storage"), "--workers", "1"])
    caplog.set_level(logging.WARNING, logger="dicom_store_scp.pynetdicom_threads")

    receiver = server.Receiver(config)
    bound = [handler for handler, _ in receiver.server.get_handlers(evt.EVT_CONN_OPEN)]
    runner = threading.Thread(target=receiver.run_until_stopped)
    receiver.start()
    runner.start()
    try:
        # Stock pynetdicom threads still store: the fallback changes speed, not behaviour.
        assert storescu(config.port, sample_file("CT_small.dcm")).statuses == [statuses.SUCCESS]
        assert storescu(config.port, sample_file("MR_small.dcm")).statuses == [statuses.SUCCESS]
    finally:
        receiver.stop()
        runner.join(timeout=30)
    server.event_handlers(config, receiver.sessions)  # built again: still one warning

    warnings = [r for r in caplog.records if r.name == "dicom_store_scp.pynetdicom_threads"]
    assert len(warnings) == 1 and "3.1.0 is not 3.0.x" in warnings[0].fields["reason"]
    assert pynetdicom_threads.handle_connection_open not in bound
    assert len(list((tmp_path / "storage" / "manifests").iterdir())) == 2
