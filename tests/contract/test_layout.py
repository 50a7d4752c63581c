from datetime import UTC, datetime

from dicom_store_contract import layout, limits


def test_batch_ids_sort_by_time_and_never_repeat():
    early = layout.new_batch_id(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    late = layout.new_batch_id(datetime(2026, 1, 2, 3, 4, 6, tzinfo=UTC))
    assert early.startswith("20260102T030405Z-")
    assert early < late
    ids = {layout.new_batch_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    assert all(layout.is_batch_id(i) for i in ids)


def test_a_batch_id_is_a_valid_client_token_and_execution_name():
    batch_id = layout.new_batch_id()
    assert len(batch_id) <= limits.CLIENT_TOKEN_LENGTH.value
    assert len(batch_id) <= limits.EXECUTION_NAME_LENGTH.value
    # clientToken: [A-Za-z0-9._-]+; execution names: no whitespace, wildcards or control characters.
    assert set(batch_id) <= set("0123456789abcdefTZ-")


def test_keys_follow_the_documented_layout():
    key = layout.instance_key("site-a/", "B", "1.2", "1.2.3", "1.2.3.4")
    assert key == "site-a/incoming/B/1.2/1.2.3/1.2.3.4.dcm"
    assert layout.manifest_key("", "B") == "manifests/B.json"
    assert layout.manifests_prefix("site-a/") == "site-a/manifests/"
    assert layout.incoming_prefix("") == "incoming/"
    assert layout.normalise_prefix("/site-a/") == "site-a/"
    assert layout.normalise_prefix("site-a") == "site-a/"
    assert layout.normalise_prefix("") == ""


def test_keys_read_back_into_their_parts():
    batch_id = layout.new_batch_id()
    key = layout.instance_key("p/", batch_id, "1.2", "1.2.3", "1.2.3.4")
    assert layout.uids_of_instance_key(key) == ("1.2", "1.2.3", "1.2.3.4")
    assert layout.uids_of_instance_key("x.dcm") == ("", "", "x")
    assert layout.batch_id_of_folder(layout.batch_prefix("p/", batch_id)) == batch_id
    assert layout.batch_id_of_folder("p/incoming/not-a-batch/") is None
