"""The limits table: one value each, every AHI quota with its page, and the parts' defaults derived from it."""

from __future__ import annotations

from dicom_store_contract import limits
from dicom_store_scp import config


def test_every_limit_names_its_source_and_appears_once():
    names = [limit.name for limit in limits.LIMITS]
    assert len(names) == len(set(names))
    for limit in limits.LIMITS:
        assert limit.source, limit.name
        if limit.adjustable is not None:  # an AHI quota: its page is the developer guide's
            assert limit.source.startswith("https://docs.aws.amazon.com/healthimaging/"), limit.name


def test_bytes_per_import_job_reads_gb_as_the_smaller_figure():
    # The quota page says "10 GB"; 10·1000³ is within it whether AHI means 10⁹ or 2³⁰ bytes per GB.
    assert limits.BYTES_PER_IMPORT_JOB.value == 10_000_000_000


def test_regional_quotas_differ_where_the_page_says():
    assert limits.CONCURRENT_IMPORT_JOBS.in_region("us-east-1") == 100
    assert limits.CONCURRENT_IMPORT_JOBS.in_region("ap-southeast-2") == 20


def test_the_scp_defaults_and_bounds_come_from_the_table():
    defaults = {setting.env: setting.default for setting in config.SETTINGS}
    assert defaults["MAXIMUM_PDU_SIZE"] == str(limits.MAXIMUM_PDU_SIZE.value)
    assert defaults["BATCH_MAX_INSTANCES"] == str(limits.BATCH_MAX_INSTANCES.value)
    assert defaults["BATCH_MAX_BYTES"] == str(limits.BATCH_MAX_BYTES.value)
    loaded = config.load([], {})
    assert loaded == config.Config(storage_dir=loaded.storage_dir)
    assert loaded.maximum_pdu_size == limits.MAXIMUM_PDU_SIZE.value


def test_the_table_renders_every_row():
    table = limits.table()
    assert all(f"| {limit.name} |" in table for limit in limits.LIMITS)
    assert "ap-southeast-2: 20" in table


def test_the_template_defaults_and_bounds_come_from_the_table():
    from template_gen.parameters import PARAMETERS

    parameters = {parameter.name: parameter for parameter in PARAMETERS}
    expected = {
        "MaximumPDUSize": (limits.MAXIMUM_PDU_SIZE, limits.PDU_SIZE_CEILING),
        # Default: the default quota; maximum: what an account whose quota was raised may set (the SCP accepts it).
        "BatchMaxInstances": (limits.BATCH_MAX_INSTANCES, limits.BATCH_MAX_INSTANCES_CEILING),
        "BatchMaxBytes": (limits.BATCH_MAX_BYTES, limits.BYTES_PER_IMPORT_JOB),
    }
    scp_defaults = {setting.env: setting.default for setting in config.SETTINGS}
    for name, (default, ceiling) in expected.items():
        assert parameters[name].default == default.value, name
        assert parameters[name].constraints["MaxValue"] == ceiling.value, name
    # One MAXIMUM_PDU_SIZE default: the stack ships what the SCP runs with when started by hand.
    assert str(parameters["MaximumPDUSize"].default) == scp_defaults["MAXIMUM_PDU_SIZE"]
    assert parameters["MaximumPDUSize"].constraints["MinValue"] == limits.PDU_SIZE_FLOOR.value


def test_a_full_batch_stays_within_ahis_nested_folder_limit():
    # Each instance adds at most a study folder and a series folder below the batch prefix (layout.instance_key):
    # with the defaults the folder limit cannot be reached; above them the SCP cuts batches by folders too.
    assert 2 * limits.BATCH_MAX_INSTANCES.whole <= limits.NESTED_FOLDERS_PER_IMPORT_JOB.whole
    assert limits.BATCH_MAX_INSTANCES.whole <= limits.FILES_PER_IMPORT_JOB.whole
    assert limits.BATCH_MAX_BYTES.whole <= limits.BYTES_PER_IMPORT_JOB.whole
