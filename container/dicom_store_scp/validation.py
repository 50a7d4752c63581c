"""AWS HealthImaging's element constraints, checked at C-STORE from the header the handler already parsed.

An import job refuses a file whose element breaks one of AHI's "DICOM element constraints" (maximum lengths, the
ranges of two counts). Acknowledging such an instance would be a lie found out hours later in the job's
failure.ndjson; refusing it at C-STORE tells the sender now. The limits live in one table
(``dicom_store_contract.limits.ELEMENT_CONSTRAINTS``, with the page they come from); this module only applies them.

Lengths are counted in characters of the value as received, without DICOM's trailing padding (spaces, NUL);
several values of one element count with their backslash separators.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date
from typing import Any

from dicom_store_contract import limits
from dicom_store_contract.limits import Limit
from pydicom.tag import BaseTag, Tag

from . import statuses

CONSTRAINTS: dict[BaseTag, Limit] = {Tag(limit.tag): limit for limit in limits.ELEMENT_CONSTRAINTS}

# AHI's "DICOM support" page: "does not currently support Binary Segmentation Images or Icon Image Sequence pixel
# data", while its transfer syntax page says binary segmentations keep their encoding. The import takes both, so
# the SCP stores them and says in its log what AHI may not serve (docs/conformance.md 3.2), rather than refuse.
DICOM_SUPPORT_PAGE = "https://docs.aws.amazon.com/healthimaging/latest/devguide/reference-dicom.html"
_SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
_SOP_CLASS_UID = Tag(0x0008, 0x0016)
_SEGMENTATION_TYPE = Tag(0x0062, 0x0001)
_ICON_IMAGE_SEQUENCE = Tag(0x0088, 0x0200)

TAGS: list[BaseTag] = sorted({*CONSTRAINTS, _SEGMENTATION_TYPE, _ICON_IMAGE_SEQUENCE})

_STUDY_DATE = Tag(0x0008, 0x0020)
# PS3.5 6.2 DA: YYYYMMDD; "YYYY.MM.DD" is the ACR-NEMA form PS3.5 still asks readers to accept.
_DATE_FORMS = (
    (re.compile(r"[0-9]{8}"), slice(0, 4), slice(4, 6), slice(6, 8)),
    (re.compile(r"[0-9]{4}\.[0-9]{2}\.[0-9]{2}"), slice(0, 4), slice(5, 7), slice(8, 10)),
)


def _text(header: Mapping[int, Any], tag: BaseTag | int) -> str | None:
    """The element's value as received, without padding; None when absent or empty."""
    value = header.get(tag)
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    text = text.rstrip(" \x00")
    return text or None


def _is_date(text: str) -> bool:
    for form, year, month, day in _DATE_FORMS:
        if form.fullmatch(text):
            try:
                date(int(text[year]), int(text[month]), int(text[day]))
            except ValueError:
                return False
            return True
    return False


# Plain int keys: the header maps int tags, and a BaseTag key would compare through its Python-level __eq__.
_IN_TAG_ORDER = [(int(tag), tag, limit) for tag, limit in sorted(CONSTRAINTS.items())]
_STUDY_DATE_NUMBER = int(_STUDY_DATE)
_SOP_CLASS_NUMBER, _SEGMENTATION_NUMBER = int(_SOP_CLASS_UID), int(_SEGMENTATION_TYPE)
_ICON_IMAGE_NUMBER = int(_ICON_IMAGE_SEQUENCE)


def check(header: Mapping[int, Any]) -> tuple[int, str, dict[str, Any]]:
    """(status, detail, log fields) for the first constraint the header breaks; SUCCESS when none."""
    for number_tag, tag, limit in _IN_TAG_ORDER:
        text = _text(header, number_tag)
        if text is None:
            continue
        if limit.unit == "value":
            try:
                number = int(text.strip())
            except ValueError:
                continue  # not a number AHI can read: it leaves the count out, as it does an absent one
            if not 0 <= number <= limit.value:
                element = _element(limit.keyword, tag)
                fields = {"element": limit.keyword, "value": number, "limit": limit.whole}
                return statuses.ELEMENT_OUT_OF_RANGE, f"{element} is {number}, AHI imports 0-{limit.whole}", fields
            continue
        if len(text) > limit.value:
            element = _element(limit.keyword, tag)
            fields = {"element": limit.keyword, "length": len(text), "limit": limit.whole}
            detail = f"{element} has {len(text)} characters, AHI imports at most {limit.whole}"
            return statuses.ELEMENT_TOO_LONG, detail, fields
        if number_tag == _STUDY_DATE_NUMBER and not _is_date(text):
            # Its value is patient data: neither the log nor the response shows it, only its length.
            element = _element(limit.keyword, tag)
            fields = {"element": limit.keyword, "length": len(text)}
            return statuses.BAD_STUDY_DATE, f"{element} is not a date (YYYYMMDD)", fields
    return statuses.SUCCESS, "", {}


def _element(keyword: str, tag: BaseTag) -> str:
    return f"{keyword} ({tag.group:04X},{tag.element:04X})"


def limited_support(header: Mapping[int, Any]) -> list[str]:
    """What AHI documents it does not (fully) support in this instance: accepted, stored, and logged."""
    found = []
    if _text(header, _SOP_CLASS_NUMBER) == _SEGMENTATION_STORAGE and _text(header, _SEGMENTATION_NUMBER) == "BINARY":
        found.append("binary segmentation")
    if _ICON_IMAGE_NUMBER in header:
        found.append("icon image sequence pixel data")
    return found
