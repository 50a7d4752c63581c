"""What a DICOM UID looks like (PS3.5 9.1): the one pattern every part checks UIDs against.

Digits in dot-separated components, at most :data:`~dicom_store_contract.limits.DICOM_UID_LENGTH` characters.
Leading zeros in a component are tolerated (common in the wild and harmless here); empty components are not,
which also keeps the UIDs that name stored objects (layout.instance_key) path-safe.
"""

from __future__ import annotations

import re

from dicom_store_contract.limits import DICOM_UID_LENGTH

# The form without anchors, for patterns built from it (the template's comma list of SOP class UIDs).
UID_FORM = r"[0-9]+(\.[0-9]+)*"
# Matched whole (fullmatch): ``$`` alone would also accept a value ending in a newline.
PATTERN = re.compile(UID_FORM)
MAX_LENGTH = DICOM_UID_LENGTH.whole


def has_uid_form(value: str) -> bool:
    """``value`` has a UID's form, whatever its length (to tell an over-long UID from a malformed one)."""
    return PATTERN.fullmatch(value) is not None


def is_uid(value: str) -> bool:
    """``value`` is one DICOM UID: 1 to :data:`MAX_LENGTH` characters of the form above."""
    return 0 < len(value) <= MAX_LENGTH and has_uid_form(value)
