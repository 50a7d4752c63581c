"""Every C-STORE status this SCP sends, and when (PS3.4 Annex B.2.3 and PS3.7 Annex C); 0x0122 and 0x0211 also
answer any other DIMSE request the association cannot serve (engine.py).

The A7xx, A9xx and Cxxx families are ranges the standard leaves to the implementation; the low byte says which
check failed, so a PACS administrator can read the reason from the sender's log alone.
"""

# The instance is durably stored (fsync'd and renamed into place, or S3 confirmed the PUT).
SUCCESS = 0x0000

# Refused, SOP class not supported: the request's Affected (or Requested) SOP Class UID is not the abstract syntax of
# the presentation context it came on (a C-ECHO or an N-ACTION on a storage context, say); its data set was read
# and dropped.
SOP_CLASS_NOT_SUPPORTED = 0x0122
# Unrecognized operation (PS3.7 Annex C: "not one of those agreed between the DIMSE-service-users"): the request
# names its presentation context's SOP class, which has no such operation here (a C-FIND on a storage context
# naming the storage class, a C-STORE on the Verification context naming Verification); its data set was read and
# dropped.
UNRECOGNIZED_OPERATION = 0x0211

# Refused, out of resources: the store (disk or S3) failed; nothing was stored, the sender should retry.
OUT_OF_RESOURCES_STORAGE = 0xA700
# Refused, out of resources: the association ended before the instance could be recorded in a batch.
OUT_OF_RESOURCES_CLOSING = 0xA701
# INGEST_MODE=stow (stow.py): AWS HealthImaging throttled the store, was unavailable or in conflict (HTTP 429/5xx, a
# 409 naming no instance, a Failure Reason of out of resources or processing failure) after retries within the time
# budget; nothing stored.
STOW_BUSY = 0xA702
# INGEST_MODE=stow: the store was not permitted (HTTP 401/403/404 or another 4xx about the request, no credentials):
# the deployment's fault (role policy, data store id, AHI_STOW_URL), not the instance's; retry once fixed.
STOW_NOT_PERMITTED = 0xA703
# INGEST_MODE=stow: no answer that lists the instance (a timeout, a dropped connection, a response without it): it
# may or may not be in HealthImaging; the sender retries (storing an instance again is harmless).
STOW_UNCONFIRMED = 0xA704

# Error, data set does not match SOP class: its SOP Class UID (0008,0016) differs from the request's.
SOP_CLASS_MISMATCH = 0xA900
# Error, data set does not match SOP class: its SOP Instance UID (0008,0018) differs from the request's.
SOP_INSTANCE_MISMATCH = 0xA901

# Error, cannot understand: the data set could not be parsed in the negotiated transfer syntax.
CANNOT_PARSE_DATASET = 0xC000
# Error, cannot understand: Study Instance UID (0020,000D) missing or not a valid UID.
BAD_STUDY_INSTANCE_UID = 0xC001
# Error, cannot understand: Series Instance UID (0020,000E) missing or not a valid UID.
BAD_SERIES_INSTANCE_UID = 0xC002
# Error, cannot understand: SOP Instance UID (0008,0018) missing or not a valid UID.
BAD_SOP_INSTANCE_UID = 0xC003
# Error, cannot understand: an element breaks AWS HealthImaging's import constraints (dicom_store_contract.limits,
# ELEMENT_CONSTRAINTS): longer than AHI imports, a count outside AHI's range, or a Study Date that is not a date.
# The import job would refuse the file; the log line names the element, its length or value and the limit.
ELEMENT_TOO_LONG = 0xC004
ELEMENT_OUT_OF_RANGE = 0xC005
BAD_STUDY_DATE = 0xC006
# Error, cannot understand: the association's batch already holds this SOP Instance UID under another Study or
# Series Instance UID. The copy it holds was acknowledged and stays (AHI imports every file under the batch prefix:
# the store keeps one object per SOP Instance UID per batch); this copy is not stored. Sent with an Error Comment.
DUPLICATE_SOP_INSTANCE = 0xC007

# Error, cannot understand: the C-STORE request's Affected SOP Instance UID (0000,1000) is missing, empty,
# multi-valued or not a valid UID; its data set was read and dropped.
BAD_REQUEST_SOP_INSTANCE_UID = 0xC010
# Error, cannot understand: the C-STORE request's Affected SOP Class UID (0000,0002) is not a valid UID, or its
# Priority (0000,0700) is missing; its data set was read and dropped.
BAD_STORE_REQUEST = 0xC011
# Error, cannot understand: the data set is larger than AHI imports in one file (MAXIMUM_INSTANCE_BYTES, at most
# limits.BYTES_PER_FILE); refused once that many bytes arrived, the rest read and dropped, nothing stored.
INSTANCE_TOO_LARGE = 0xC012
# Error, cannot understand: INGEST_MODE=stow, AWS HealthImaging refused the instance (HTTP 400, or its Failure Reason
# is not one worth retrying); the log line holds the service's reason.
STOW_REFUSED = 0xC013
# Error, cannot understand: the C-STORE handler raised an unforeseen exception (the code pynetdicom used for a
# handler's exception); nothing is stored. Not expected: the fuzzer fails on it.
HANDLER_FAILED = 0xC211

# What each failure status means, for logs, the conformance statement and the response's Error Comment (0000,0902),
# which is LO: at most 64 characters, no backslash, and never an element's value (patient data stays out of it).
REASONS = {
    SOP_CLASS_NOT_SUPPORTED: "request's SOP Class UID is not its presentation context's",
    UNRECOGNIZED_OPERATION: "the presentation context's SOP class has no such operation here",
    OUT_OF_RESOURCES_STORAGE: "storage failed; nothing was stored",
    OUT_OF_RESOURCES_CLOSING: "association was closing; nothing was recorded",
    STOW_BUSY: "AWS HealthImaging busy or unavailable; retry later",
    STOW_NOT_PERMITTED: "AWS HealthImaging did not permit the store; check the SCP setup",
    STOW_UNCONFIRMED: "AWS HealthImaging did not confirm the store; retry",
    SOP_CLASS_MISMATCH: "SOP Class UID in the data set differs from the request",
    SOP_INSTANCE_MISMATCH: "SOP Instance UID in the data set differs from the request",
    CANNOT_PARSE_DATASET: "data set cannot be parsed",
    BAD_STUDY_INSTANCE_UID: "Study Instance UID missing or invalid",
    BAD_SERIES_INSTANCE_UID: "Series Instance UID missing or invalid",
    BAD_SOP_INSTANCE_UID: "SOP Instance UID missing or invalid",
    ELEMENT_TOO_LONG: "an element is longer than AWS HealthImaging imports",
    ELEMENT_OUT_OF_RANGE: "a count is outside the range AWS HealthImaging imports",
    BAD_STUDY_DATE: "Study Date is not a DICOM date",
    DUPLICATE_SOP_INSTANCE: "SOP Instance UID already stored under another Study/Series UID",
    INSTANCE_TOO_LARGE: "instance larger than AWS HealthImaging imports; nothing stored",
    STOW_REFUSED: "AWS HealthImaging refused the instance; nothing stored",
    BAD_REQUEST_SOP_INSTANCE_UID: "request's Affected SOP Instance UID missing or not one valid UID",
    BAD_STORE_REQUEST: "request's Affected SOP Class UID or Priority missing or invalid",
    HANDLER_FAILED: "unexpected failure in the SCP; nothing was stored",
}


# The element a failure names in the response's Offending Element (0000,0901), where the status always concerns
# the same one; an AHI constraint's (0xC004, 0xC005) is the element validation.py found.
OFFENDING_ELEMENTS = {
    SOP_CLASS_MISMATCH: 0x00080016,
    SOP_INSTANCE_MISMATCH: 0x00080018,
    BAD_SOP_INSTANCE_UID: 0x00080018,
    BAD_STUDY_INSTANCE_UID: 0x0020000D,
    BAD_SERIES_INSTANCE_UID: 0x0020000E,
    BAD_STUDY_DATE: 0x00080020,
    BAD_REQUEST_SOP_INSTANCE_UID: 0x00001000,
}


def carries_offending_element(status: int) -> bool:
    """PS3.4 B.2.3: Offending Element goes with the A9xx and Cxxx failures (Error Comment with every failure)."""
    return status >> 8 == 0xA9 or status >> 12 == 0xC


def family(status: int) -> str:
    """The status family (PS3.4 B.2.3) a failure status belongs to: the StatusFamily metric dimension."""
    if status in (SOP_CLASS_NOT_SUPPORTED, UNRECOGNIZED_OPERATION):
        return "SOPClassNotSupported"
    if status >> 8 == 0xA7:
        return "OutOfResources"
    if status >> 8 == 0xA9:
        return "DataSetMismatch"
    return "CannotUnderstand"
