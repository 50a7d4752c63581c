"""What a DICOM UID looks like: one pattern and one length (PS3.5 9.1), and the parts' checks are these."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from dicom_store_contract import limits, uids

from template_gen.parameters import UID_LIST_PATTERN


@pytest.mark.parametrize(
    "value",
    ["1", "1.2.840.10008.5.1.4.1.1.2", "0.0", "1.02.3", "1." + "2" * (limits.DICOM_UID_LENGTH.whole - 2)],
)
def test_uids(value):
    assert uids.is_uid(value)
    assert uids.has_uid_form(value)


@pytest.mark.parametrize(
    "value", ["", ".", "1.", ".1", "1..2", "1.2.x", " 1.2", "1.2 ", "1.2\n", "1.2\x00", "\u0661.\u0662"]
)
def test_not_uids(value):
    assert not uids.is_uid(value)
    assert not uids.has_uid_form(value)


def test_the_length_is_dicoms_and_told_apart_from_the_form():
    too_long = "1." + "2" * (limits.DICOM_UID_LENGTH.whole - 1)
    assert uids.MAX_LENGTH == limits.DICOM_UID_LENGTH.value == 64
    assert not uids.is_uid(too_long)
    assert uids.has_uid_form(too_long)


def test_the_templates_uid_list_is_built_from_the_form():
    allowed = re.compile(UID_LIST_PATTERN)
    assert allowed.fullmatch("")
    assert allowed.fullmatch("1.2.840.10008.5.1.4.1.1.2,1.2.3")
    assert not allowed.fullmatch("1.2.3,")
    assert not allowed.fullmatch("1..2")


def test_docs_state_the_form_and_the_length():
    text = (Path(__file__).resolve().parents[2] / "docs" / "contracts.md").read_text(encoding="utf-8")
    section = text.split("## DICOM UIDs", 1)[1].split("\n## ", 1)[0]
    assert f"`{uids.UID_FORM}`" in section
    assert f"1 to {uids.MAX_LENGTH} characters" in section
