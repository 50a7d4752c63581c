"""DICOM Audit Messages (PS3.15 A.5): the XML of each event the product reports, one message per line.

The SCP (dicom_store_scp.audit) and the import functions (audit_ingest.py, for CheckStatus) build theirs here.

The element and attribute names, their order and the coded values are the standard's: the schema of A.5.1 (RELAX NG,
derived from RFC 3881; the tests validate every message against its published text), the event definitions of
A.5.3 and the codes of PS3.16 (CID 400-405). Codes are written as ``csd-code``/``codeSystemName``/``originalText``
(A.5.2.1, "coded value type").

A message is built from plain values: nothing here reads sockets, data sets or configuration.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

# (code, coding scheme, meaning)
Code = tuple[str, str, str]

# Event IDs (PS3.16 CID 400 "Audit Event ID").
APPLICATION_ACTIVITY: Code = ("110100", "DCM", "Application Activity")
INSTANCES_ACCESSED: Code = ("110103", "DCM", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED: Code = ("110104", "DCM", "DICOM Instances Transferred")
SECURITY_ALERT: Code = ("110113", "DCM", "Security Alert")
# Event type codes (CID 401 "Audit Event Type Code", CID 403 "Security Alert Type Code").
APPLICATION_START: Code = ("110120", "DCM", "Application Start")
APPLICATION_STOP: Code = ("110121", "DCM", "Application Stop")
NODE_AUTHENTICATION: Code = ("110126", "DCM", "Node Authentication")
# Storage Commitment has no event of its own in A.5.3: it is reported as DICOM Instances Accessed (the SCP reads what
# it holds of the requested instances and tells the requester), told apart by two event types: the SOP class (DCMUID,
# PS3.16's scheme for DICOM UIDs), and a code of this product's own naming the step (the request answered, the report
# sent or given up); private coding schemes start with "99" (PS3.16).
STORAGE_COMMITMENT_PUSH_MODEL: Code = ("1.2.840.10008.1.20.1", "DCMUID", "Storage Commitment Push Model SOP Class")
OWN_CODES = "99AHISTORESCP"
COMMITMENT_REQUEST: Code = ("STGCMT-REQUEST", OWN_CODES, "Storage Commitment Request")
COMMITMENT_REPORT: Code = ("STGCMT-REPORT", OWN_CODES, "Storage Commitment Report")
TRANSACTION_UID: Code = ("STGCMT-TRANSACTION-UID", OWN_CODES, "Storage Commitment Transaction UID")
# The ingest outcome in AWS HealthImaging: A.5.3 has no event for instances entering an archive from the product's
# own staging area (110107 Import is data entering the organisation's security domain, from media, by a user), so
# it is reported as what it is, DICOM Instances Transferred from the batch (or this SCP) to the data store, told
# apart from the SCP's own 110104 by an event type of this product's naming: the road the instances took.
HEALTHIMAGING_IMPORT: Code = ("AHI-IMPORT", OWN_CODES, "HealthImaging Import Job")
HEALTHIMAGING_STOW: Code = ("AHI-STOW-RS", OWN_CODES, "HealthImaging STOW-RS")
IMAGE_SET_ID: Code = ("AHI-IMAGE-SET-ID", OWN_CODES, "HealthImaging Image Set ID")
IMPORT_JOB_ID: Code = ("AHI-IMPORT-JOB-ID", OWN_CODES, "HealthImaging Import Job ID")
# Active participant roles (CID 402 "Audit Active Participant Role ID Code").
ROLE_APPLICATION: Code = ("110150", "DCM", "Application")
ROLE_DESTINATION: Code = ("110152", "DCM", "Destination Role ID")
ROLE_SOURCE: Code = ("110153", "DCM", "Source Role ID")
# Participant object ID types (CID 404 "Audit Participant Object ID Type Code"; RFC 3881's own for the patient).
STUDY_INSTANCE_UID: Code = ("110180", "DCM", "Study Instance UID")
PATIENT_NUMBER: Code = ("2", "RFC-3881", "Patient Number")

# EventOutcomeIndicator (A.5.1.1).
SUCCESS = "0"
MINOR_FAILURE = "4"
SERIOUS_FAILURE = "8"
MAJOR_FAILURE = "12"

# EventActionCode.
CREATE = "C"
READ = "R"
EXECUTE = "E"

# NetworkAccessPointTypeCode: 1 a machine name (DNS), 2 an IP address.
_IP_ADDRESS = re.compile(r"^[0-9.]+$|:")

# AuditSourceTypeCode 4: "Application server process tier in a multi-tier system".
_APPLICATION_SERVER = "4"

# Characters XML 1.0 cannot carry, and line ends (one message per line): replaced, so a value sent by a peer
# (a patient name, an AE title) can neither break the message nor the line.
_NOT_XML_OR_LINE_END = re.compile("[\x00-\x1f\x7f\ud800-\udfff\ufffe\uffff]")


def clean(text: str) -> str:
    return _NOT_XML_OR_LINE_END.sub("\ufffd", text)


@dataclass(frozen=True)
class Node:
    """A DICOM process taking part in an event: its AE title and network address (where known)."""

    ae_title: str
    address: str = ""
    # The identity of the process (A.5.2.1): this SCP's process id; a peer's AE title when nothing better is known.
    process: str = ""

    @property
    def user_id(self) -> str:
        return self.process or self.ae_title or self.address or "unknown"


@dataclass(frozen=True)
class Source:
    """AuditSourceIdentification: who reports (this SCP) and for which enterprise site."""

    source_id: str
    enterprise_site_id: str = ""


@dataclass
class Study:
    """What one association transferred of one study: SOP classes with their instance counts, and its patients."""

    study_instance_uid: str
    sop_classes: dict[str, int] = field(default_factory=dict)
    # (Patient ID, Patient's Name) pairs as the instances carry them; normally one.
    patients: dict[tuple[str, str], None] = field(default_factory=dict)
    # Instances of this study answered with a failure status, by status.
    failures: dict[int, int] = field(default_factory=dict)


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _coded(parent: ET.Element, tag: str, code: Code) -> ET.Element:
    return ET.SubElement(parent, tag, {"csd-code": code[0], "codeSystemName": code[1], "originalText": clean(code[2])})


def _event(root: ET.Element, event: Code, action: str, outcome: str, types: Sequence[Code], description: str) -> None:
    identification = ET.SubElement(
        root,
        "EventIdentification",
        {"EventActionCode": action, "EventDateTime": now(), "EventOutcomeIndicator": outcome},
    )
    _coded(identification, "EventID", event)
    for code in types:
        _coded(identification, "EventTypeCode", code)
    if description:
        ET.SubElement(identification, "EventOutcomeDescription").text = clean(description)


def _participant(root: ET.Element, node: Node, requestor: bool, roles: Iterable[Code]) -> None:
    attributes = {"UserID": clean(node.user_id), "UserIsRequestor": "true" if requestor else "false"}
    if node.ae_title:
        # A.5.2.2: a DICOM application's AE titles, "AETITLES=" and the titles separated by ";".
        attributes["AlternativeUserID"] = clean(f"AETITLES={node.ae_title}")
    if node.address:
        attributes["NetworkAccessPointID"] = clean(node.address)
        attributes["NetworkAccessPointTypeCode"] = "2" if _IP_ADDRESS.search(node.address) else "1"
    participant = ET.SubElement(root, "ActiveParticipant", attributes)
    for role in roles:
        _coded(participant, "RoleIDCode", role)


def _source(root: ET.Element, source: Source) -> None:
    attributes = {"AuditSourceID": clean(source.source_id)}
    if source.enterprise_site_id:
        attributes["AuditEnterpriseSiteID"] = clean(source.enterprise_site_id)
    identification = ET.SubElement(root, "AuditSourceIdentification", attributes)
    ET.SubElement(identification, "AuditSourceTypeCode", {"csd-code": _APPLICATION_SERVER})


def _study(root: ET.Element, study: Study) -> None:
    participant = ET.SubElement(
        root,
        "ParticipantObjectIdentification",
        {
            "ParticipantObjectID": clean(study.study_instance_uid),
            "ParticipantObjectTypeCode": "2",  # system object
            "ParticipantObjectTypeCodeRole": "3",  # report (A.5.3.10: the study)
        },
    )
    _coded(participant, "ParticipantObjectIDTypeCode", STUDY_INSTANCE_UID)
    # A.5.1.1 requires a name or a query for every participant object; a study has no name: empty, not invented.
    ET.SubElement(participant, "ParticipantObjectName").text = ""
    description = ET.SubElement(participant, "ParticipantObjectDescription")
    for sop_class, count in sorted(study.sop_classes.items()):
        ET.SubElement(description, "SOPClass", {"UID": clean(sop_class), "NumberOfInstances": str(count)})


def _patient(root: ET.Element, patient_id: str, patient_name: str) -> None:
    participant = ET.SubElement(
        root,
        "ParticipantObjectIdentification",
        {
            "ParticipantObjectID": clean(patient_id),
            "ParticipantObjectTypeCode": "1",  # person
            "ParticipantObjectTypeCodeRole": "1",  # patient
        },
    )
    _coded(participant, "ParticipantObjectIDTypeCode", PATIENT_NUMBER)
    ET.SubElement(participant, "ParticipantObjectName").text = clean(patient_name)


def _encode(root: ET.Element) -> str:
    return ET.tostring(root, encoding="unicode", short_empty_elements=True)


def application_activity(source: Source, application: Node, started: bool) -> str:
    """110100 Application Activity (A.5.3.1): this SCP's process started or stopped."""
    root = ET.Element("AuditMessage")
    _event(root, APPLICATION_ACTIVITY, EXECUTE, SUCCESS, [APPLICATION_START if started else APPLICATION_STOP], "")
    _participant(root, application, False, [ROLE_APPLICATION])
    _source(root, source)
    return _encode(root)


def instances_transferred(
    source: Source, sender: Node, receiver: Node, study: Study | None, outcome: str, description: str
) -> str:
    """110104 DICOM Instances Transferred (A.5.3.10), as the receiver reports it: one association, one study.

    The sender started the association (the requestor); EventActionCode C: this SCP creates its copies. ``study``
    None: the association's instances were all refused before their study could be read.
    """
    root = ET.Element("AuditMessage")
    _event(root, INSTANCES_TRANSFERRED, CREATE, outcome, [], description)
    _participant(root, sender, True, [ROLE_SOURCE])
    _participant(root, receiver, False, [ROLE_DESTINATION])
    _source(root, source)
    if study is not None:
        _study(root, study)
        for patient_id, patient_name in study.patients:
            _patient(root, patient_id, patient_name)
    return _encode(root)


def security_alert(source: Source, reporter: Node, peer: Node, description: str) -> str:
    """110113 Security Alert (A.5.3.11): an association or connection refused for a reason of trust.

    Minor failure: the attempt was stopped (A.5.3.11: the mitigation worked); Node Authentication names the kind.
    The reporting process is this SCP; the performing one is the refused peer, who made the request.
    """
    root = ET.Element("AuditMessage")
    _event(root, SECURITY_ALERT, EXECUTE, MINOR_FAILURE, [NODE_AUTHENTICATION], description)
    _participant(root, reporter, False, [ROLE_APPLICATION])
    _participant(root, peer, True, [])
    _source(root, source)
    return _encode(root)


def storage_commitment(
    source: Source,
    application: Node,
    requester: Node,
    transaction_uid: str,
    sop_classes: dict[str, int],
    reported: bool,
    outcome: str,
    description: str,
) -> str:
    """Storage Commitment, as 110103 DICOM Instances Accessed (read) with event types saying which step (above).

    The requester asked (UserIsRequestor); this SCP answers. The participant object is the transaction: its UID,
    and the SOP classes it names with their instance counts. The studies and patients are not named: a request
    carries SOP Instance UIDs only, and nothing is read of the instances to report them.
    """
    root = ET.Element("AuditMessage")
    step = COMMITMENT_REPORT if reported else COMMITMENT_REQUEST
    _event(root, INSTANCES_ACCESSED, READ, outcome, [STORAGE_COMMITMENT_PUSH_MODEL, step], description)
    _participant(root, requester, True, [])
    _participant(root, application, False, [ROLE_APPLICATION])
    _source(root, source)
    if transaction_uid:
        participant = ET.SubElement(
            root,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": clean(transaction_uid),
                "ParticipantObjectTypeCode": "2",  # system object
                "ParticipantObjectTypeCodeRole": "20",  # job
            },
        )
        _coded(participant, "ParticipantObjectIDTypeCode", TRANSACTION_UID)
        ET.SubElement(participant, "ParticipantObjectName").text = ""
        description_element = ET.SubElement(participant, "ParticipantObjectDescription")
        for sop_class, count in sorted(sop_classes.items()):
            ET.SubElement(description_element, "SOPClass", {"UID": clean(sop_class), "NumberOfInstances": str(count)})
    return _encode(root)


# Image sets and failure reasons named per ingest message; more are counted in its description.
LISTED_PER_STUDY = 16


@dataclass
class IngestedStudy:
    """What HealthImaging made of one study of one batch: imported instances by SOP class, failed ones by reason."""

    study_instance_uid: str
    sop_classes: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    # In the order HealthImaging named them; at most LISTED_PER_STUDY (``unlisted_image_sets`` counts the rest).
    image_set_ids: dict[str, None] = field(default_factory=dict)
    unlisted_image_sets: int = 0
    with_warnings: int = 0

    def add(
        self, sop_class: str, imported: bool, image_set_id: str = "", reason: str = "", warnings: bool = False
    ) -> None:
        if imported:
            self.sop_classes[sop_class] = self.sop_classes.get(sop_class, 0) + 1
            self.with_warnings += warnings
            if image_set_id and image_set_id not in self.image_set_ids:
                if len(self.image_set_ids) < LISTED_PER_STUDY:
                    self.image_set_ids[image_set_id] = None
                else:
                    self.unlisted_image_sets += 1
            return
        reason = reason or "failed"
        if reason in self.failures or len(self.failures) < LISTED_PER_STUDY:
            self.failures[reason] = self.failures.get(reason, 0) + 1
        else:
            self.failures["(other reasons)"] = self.failures.get("(other reasons)", 0) + 1

    @property
    def imported(self) -> int:
        return sum(self.sop_classes.values())

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def outcome(self) -> str:
        """0 all imported, 4 some failed, 8 none imported (the description says which failed, and why)."""
        if not self.failed:
            return SUCCESS
        return MINOR_FAILURE if self.imported else SERIOUS_FAILURE

    def description(self) -> str:
        text = f"{self.imported} instance(s) imported into AWS HealthImaging"
        if self.with_warnings:
            text += f" ({self.with_warnings} with warnings)"
        if self.image_set_ids:
            text += f", image set(s) {', '.join(self.image_set_ids)}"
            if self.unlisted_image_sets:
                text += f" and {self.unlisted_image_sets} more"
        if self.failed:
            reasons = "; ".join(f"{reason} x{count}" for reason, count in sorted(self.failures.items()))
            text += f"; {self.failed} failed: {reasons}"
        return text


def _system_object(root: ET.Element, object_id: str, id_type: Code, role: str = "") -> ET.Element:
    attributes = {"ParticipantObjectID": clean(object_id), "ParticipantObjectTypeCode": "2"}  # system object
    if role:
        attributes["ParticipantObjectTypeCodeRole"] = role
    participant = ET.SubElement(root, "ParticipantObjectIdentification", attributes)
    _coded(participant, "ParticipantObjectIDTypeCode", id_type)
    ET.SubElement(participant, "ParticipantObjectName").text = ""
    return participant


def ingest_outcome(
    source: Source, origin: Node, data_store: Node, study: IngestedStudy, road: Code, job_id: str = ""
) -> str:
    """The ingest outcome of one study of one batch in HealthImaging, as 110104 DICOM Instances Transferred.

    ``road``: HEALTHIMAGING_IMPORT (an import job; ``origin`` the batch folder it read, ``job_id`` the job) or
    HEALTHIMAGING_STOW (``origin`` this SCP). The requestor is the origin (the product asked HealthImaging to take
    the instances); the data store is the destination. The study names its imported SOP classes with their counts;
    each image set is a participant object of its own. No patient: the import pipeline holds no patient identifiers
    (the manifest carries none), and the SCP's own 110104 for the same Study Instance UID names the patient.
    """
    root = ET.Element("AuditMessage")
    _event(root, INSTANCES_TRANSFERRED, CREATE, study.outcome(), [road], study.description())
    _participant(root, origin, True, [ROLE_SOURCE])
    _participant(root, data_store, False, [ROLE_DESTINATION])
    _source(root, source)
    _study(root, Study(study.study_instance_uid, dict(study.sop_classes)))
    for image_set_id in study.image_set_ids:
        _system_object(root, image_set_id, IMAGE_SET_ID)
    if job_id:
        _system_object(root, job_id, IMPORT_JOB_ID, role="20")  # job
    return _encode(root)
