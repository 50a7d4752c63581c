from datetime import UTC, datetime

from dicom_store_scp import layout


def test_batch_ids_sort_by_time_and_never_repeat():
    early = layout.new_batch_id(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    late = layout.new_batch_id(datetime(2026, 1, 2, 3, 4, 6, tzinfo=UTC))
    assert early.startswith("20260102T030405Z-")
    assert early < late
    ids = {layout.new_batch_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    assert all(layout.BATCH_ID_PATTERN.match(i) for i in ids)
    # Step Functions execution names are at most 80 characters; AHI clientTokens at most 64.
    assert all(len(i) <= 64 for i in ids)


def test_keys_follow_the_documented_layout():
    key = layout.instance_key("site-a/", "B", "1.2", "1.2.3", "1.2.3.4")
    assert key == "site-a/incoming/B/1.2/1.2.3/1.2.3.4.dcm"
    assert layout.manifest_key("", "B") == "manifests/B.json"
    assert layout.normalise_prefix("/site-a/") == "site-a/"
    assert layout.normalise_prefix("") == ""
