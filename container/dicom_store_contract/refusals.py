"""A refused C-STORE, recorded where ``dicom-store-scp status`` looks: "did it arrive?" answered "refused, and why".

The SCP records each C-STORE it answers with a failure status whose request names a valid SOP Instance UID (the
data set refusals, the duplicate, the size limit, the storage failures a sender retries): in the local store as one
small JSON file, in the stack as an item of the instance table in state ``REFUSED``. Both carry the same attributes,
named here; never an element's value, only the status, its fixed reason text (the SCP's ``statuses.REASONS``), the
element's keyword, who sent it and when.

The instance table's item is written only where the table holds nothing for the instance or an earlier refusal: a
copy that was received (RECEIVED, IMPORTING, IMPORTED...) or whose import failed keeps its item, and the import
pipeline's item for a later good copy replaces the refusal (``functions/tracking.py``). Refusal items carry
``tables.EXPIRES_AT``: the table's time to live removes them after ``RETENTION_DAYS``. In the local store a stored
copy of the instance wins the same way (``status`` shows the stored copy), the files of a day are capped at
``LOCAL_PER_DAY`` and day folders older than ``RETENTION_DAYS`` are removed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dicom_store_contract import tables

# The instance's state in the instance table (and in status's output for the local store).
REFUSED = "REFUSED"

# Attributes of a refusal record, besides the table's key and the state.
SOP_CLASS_UID = "sopClassUID"
STATUS = "refusalStatus"  # the DIMSE status answered, as "0xC006"
REASON = "refusalReason"  # the status's reason text: fixed text, no value from the data set
ELEMENT = "offendingElement"  # the keyword of the element the refusal is about, when one is
CALLING_AE = "callingAE"
CALLED_AE = "calledAE"
PEER = "peer"  # address:port of the sender
REFUSED_AT = "refusedAt"  # UTC, ISO 8601 with milliseconds and Z

# Every attribute a refusal item may have: the template allows the SCP's task role to write these and no others.
ITEM_ATTRIBUTES = (
    tables.SOP_INSTANCE_UID,
    tables.STUDY_INSTANCE_UID,
    tables.SERIES_INSTANCE_UID,
    SOP_CLASS_UID,
    "state",
    STATUS,
    REASON,
    ELEMENT,
    CALLING_AE,
    CALLED_AE,
    PEER,
    REFUSED_AT,
    tables.EXPIRES_AT,
)

# How long a refusal stays findable: long enough for "the modality says it sent it last week".
RETENTION_DAYS = 30
# Local store: at most this many refusal files a day (per receiving process); beyond it refusals are only logged.
LOCAL_PER_DAY = 10_000

# The out-of-resources family (PS3.4 B.2.3, 0xA7xx): nothing is wrong with the instance; the sender retries it.
_OUT_OF_RESOURCES = 0xA7


def sender_retries(status: str) -> bool:
    """Whether the status (as recorded, "0xA700") tells the sender to send the instance again later."""
    try:
        return int(status, 16) >> 8 == _OUT_OF_RESOURCES
    except ValueError:
        return False


def describe(record: Mapping[str, Any]) -> str:
    """One line for ``status``: what was answered, why, when and to whom."""
    status = str(record.get(STATUS, ""))
    reason = str(record.get(REASON, ""))
    element = record.get(ELEMENT)
    if element:
        reason += f" ({element})"
    if sender_retries(status):
        text = f"failed to store, sender told to retry ({status}: {reason})"
    else:
        text = f"refused {status}: {reason}"
    if record.get(REFUSED_AT):
        text += f", at {record[REFUSED_AT]}"
    sender = str(record.get(CALLING_AE) or "")
    if record.get(PEER):
        sender = f"{sender} ({record[PEER]})" if sender else str(record[PEER])
    if sender:
        text += f" from {sender}"
    return text
