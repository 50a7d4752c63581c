"""The tracking tables' keys and indexes: the template defines them and docs/contracts.md lists them."""

from __future__ import annotations

from pathlib import Path

from dicom_store_contract import tables
from support.cfn import rendered_template

CONTRACTS = Path(__file__).resolve().parents[2] / "docs" / "contracts.md"


def _schema(index: tables.Index) -> list[dict[str, str]]:
    keys = [{"AttributeName": index.partition_key, "KeyType": "HASH"}]
    if index.sort_key:
        keys.append({"AttributeName": index.sort_key, "KeyType": "RANGE"})
    return keys


def test_the_template_defines_every_index_of_the_contract() -> None:
    resources = rendered_template()["Resources"]
    for logical_id, key, indexes in (
        ("DicomInstanceTable", tables.SOP_INSTANCE_UID, tables.INSTANCE_INDEXES),
        ("DicomImportJobTable", tables.JOB_ID, tables.JOB_INDEXES),
    ):
        table = resources[logical_id]["Properties"]
        assert table["KeySchema"] == [{"AttributeName": key, "KeyType": "HASH"}]
        defined = {i["IndexName"]: (i["KeySchema"], i["Projection"]) for i in table["GlobalSecondaryIndexes"]}
        assert defined == {i.name: (_schema(i), {"ProjectionType": "ALL"}) for i in indexes}


def test_docs_list_every_index() -> None:
    text = CONTRACTS.read_text(encoding="utf-8")
    for index in (*tables.INSTANCE_INDEXES, *tables.JOB_INDEXES, *tables.COMMITMENT_INDEXES):
        assert f"`{index.name}` (`{index.partition_key}`" in text, index.name
