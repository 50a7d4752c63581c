"""A refusal's record: one set of attributes, which the docs list and the template lets the SCP write, and no more."""

from __future__ import annotations

from pathlib import Path

from dicom_store_contract import refusals, tables
from support.cfn import rendered_template

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_the_task_role_may_put_a_refusals_attributes_and_no_others() -> None:
    resources = rendered_template()["Resources"]
    policies = {
        p["PolicyName"]: p["PolicyDocument"]
        for p in resources["ScpTaskRole"]["Properties"]["Policies"]
        if "PolicyName" in p
    }
    (statement,) = policies["record-refused-instances"]["Statement"]
    assert statement["Action"] == ["dynamodb:PutItem"]
    assert statement["Resource"] == [{"Fn::GetAtt": ["DicomInstanceTable", "Arn"]}]
    assert statement["Condition"]["ForAllValues:StringEquals"] == {
        "dynamodb:Attributes": list(refusals.ITEM_ATTRIBUTES)
    }
    # The pipeline's own attributes are not among them: the SCP cannot forge a received or imported instance.
    assert not {tables.BATCH_ID, tables.JOB_ID, "s3Key", "imageSetId"} & set(refusals.ITEM_ATTRIBUTES)
    ttl = resources["DicomInstanceTable"]["Properties"]["TimeToLiveSpecification"]
    assert ttl == {"AttributeName": tables.EXPIRES_AT, "Enabled": True}


def test_the_docs_describe_the_record_and_its_bounds() -> None:
    contracts = (DOCS / "contracts.md").read_text(encoding="utf-8")
    section = contracts.split("## DynamoDB", 1)[1].split("\n## ", 1)[0]
    for name in refusals.ITEM_ATTRIBUTES:
        assert name in section, name
    deployment = (DOCS / "deployment.md").read_text(encoding="utf-8")
    for text in (contracts, deployment):
        assert f"{refusals.RETENTION_DAYS} days" in text
        assert f"{refusals.LOCAL_PER_DAY:,}" in text


def test_a_retry_status_reads_as_one() -> None:
    record = {refusals.STATUS: "0xA700", refusals.REASON: "storage failed; nothing was stored"}
    assert refusals.sender_retries("0xA701") and not refusals.sender_retries("0xC006")
    assert refusals.describe(record).startswith("failed to store, sender told to retry (0xA700: storage failed")
    assert refusals.describe({**record, refusals.STATUS: "0xC012"}).startswith("refused 0xC012: ")
