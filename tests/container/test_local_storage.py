"""The local store: objects land under the key they are given and nowhere else, durably, in folders made as needed."""

from __future__ import annotations

import shutil

import pytest
from dicom_store_scp.storage import LocalStorage, StorageError


def _spooled(store: LocalStorage, name: str, body: bytes) -> object:
    source = store.spool_dir() / name
    source.write_bytes(body)
    return source


def test_instances_land_under_their_key_and_leave_the_spool(tmp_path):
    store = LocalStorage(tmp_path / "store")
    store.prepare()
    for number in range(3):
        source = _spooled(store, f"{number}.dcm", b"DICM%d" % number)
        store.store_instance(source, f"incoming/b1/1.2/1.2.3/1.2.3.{number}.dcm", "")
        assert not source.exists()
    stored = sorted(path.relative_to(tmp_path / "store").as_posix() for path in (tmp_path / "store").rglob("*.dcm"))
    assert stored == [f"incoming/b1/1.2/1.2.3/1.2.3.{number}.dcm" for number in range(3)]
    assert (tmp_path / "store/incoming/b1/1.2/1.2.3/1.2.3.2.dcm").read_bytes() == b"DICM2"


def test_a_folder_removed_after_it_was_made_is_made_again(tmp_path):
    """The store remembers folders it made; one an operator removed since then is made again, and the instance is
    stored, not failed."""
    store = LocalStorage(tmp_path / "store")
    store.prepare()
    store.store_instance(_spooled(store, "a.dcm", b"first"), "incoming/b1/1.2/1.2.3/1.2.3.1.dcm", "")
    shutil.rmtree(tmp_path / "store/incoming")
    store.store_instance(_spooled(store, "b.dcm", b"second"), "incoming/b1/1.2/1.2.3/1.2.3.2.dcm", "")
    assert (tmp_path / "store/incoming/b1/1.2/1.2.3/1.2.3.2.dcm").read_bytes() == b"second"


@pytest.mark.parametrize("key", ["../outside.dcm", "incoming/../../outside.dcm", "/tmp/outside.dcm", "", "."])
def test_a_key_outside_the_store_is_refused(tmp_path, key):
    store = LocalStorage(tmp_path / "store")
    store.prepare()
    source = _spooled(store, "x.dcm", b"x")
    with pytest.raises(StorageError, match="outside the store"):
        store.store_instance(source, key, "")
    with pytest.raises(StorageError, match="outside the store"):
        store.store_manifest(key, b"{}")
    assert source.exists()
    assert not (tmp_path / "outside.dcm").exists()


def test_a_spool_that_went_missing_is_a_storage_failure(tmp_path):
    store = LocalStorage(tmp_path / "store")
    store.prepare()
    with pytest.raises(StorageError):
        store.store_instance(store.spool_dir() / "never-written.dcm", "incoming/b1/1.2/1.2.3/1.2.3.1.dcm", "")
