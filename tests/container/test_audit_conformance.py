"""The conformance statement lists every audit message the SCP can send (PS3.15 A.5 asks for it): each message
builder's output, valid against the schema, has its Event ID and event type codes in docs/conformance.md section 7
(the security guide names each Event ID too)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from dicom_store_contract import audit_messages as messages
from dicom_store_contract.audit_messages import IngestedStudy, Node, Source, Study
from support.audit import validated

DOCS = Path(__file__).parents[2] / "docs"


def _built() -> dict[str, str]:
    source, scp, peer = Source("STORESCP"), Node("STORESCP", "10.0.0.1", "42"), Node("MODALITY", "10.0.0.2")
    study = Study("1.2.3", {"1.2.840.10008.5.1.4.1.1.2": 2}, {("ID1", "DOE^JANE"): None})
    ingested = IngestedStudy("1.2.3", {"1.2.840.10008.5.1.4.1.1.2": 2}, {"refused": 1}, {"a" * 32: None})
    batch, data_store = Node("STORESCP", "", "s3://bucket/incoming/b/"), Node("", "medical-imaging.example", "d")
    return {
        "application_activity start": messages.application_activity(source, scp, started=True),
        "application_activity stop": messages.application_activity(source, scp, started=False),
        "instances_transferred": messages.instances_transferred(source, peer, scp, study, messages.SUCCESS, "2"),
        "security_alert": messages.security_alert(source, scp, peer, "calling AE title not recognised"),
        "storage_commitment request": messages.storage_commitment(
            source, scp, peer, "1.2.4", {"1.2.840.10008.5.1.4.1.1.2": 2}, False, messages.SUCCESS, "recorded"
        ),
        "storage_commitment report": messages.storage_commitment(
            source, scp, peer, "1.2.4", {"1.2.840.10008.5.1.4.1.1.2": 2}, True, messages.MINOR_FAILURE, "1 failed"
        ),
        "ingest_outcome import": messages.ingest_outcome(
            source, batch, data_store, ingested, messages.HEALTHIMAGING_IMPORT, "j" * 32
        ),
        "ingest_outcome stow": messages.ingest_outcome(source, scp, data_store, ingested, messages.HEALTHIMAGING_STOW),
    }


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    following = re.search(r"^## ", text[start + len(heading) :], re.MULTILINE)
    return text[start : start + len(heading) + following.start()] if following else text[start:]


def test_every_message_builder_is_exercised_here() -> None:
    builders = {
        name
        for name, function in inspect.getmembers(messages, inspect.isfunction)
        if function.__module__ == messages.__name__ and list(inspect.signature(function).parameters)[:1] == ["source"]
    }
    assert builders == {key.split()[0] for key in _built()}


def test_the_conformance_statement_lists_every_event_and_its_type_codes() -> None:
    section = _section((DOCS / "conformance.md").read_text(), "## 7. Audit trail")
    rows = [line for line in section.splitlines() if line.startswith("| 1")]
    security = _section((DOCS / "security.md").read_text(), "## Audit trail")
    for kind, line in _built().items():
        message = validated(line)
        event = message.find("EventIdentification/EventID")
        code, meaning = event.get("csd-code"), event.get("originalText")
        types = [
            (t.get("csd-code"), t.get("codeSystemName")) for t in message.iterfind("EventIdentification/EventTypeCode")
        ]
        # One row per use of an Event ID: the one naming the message's event types (the type column "—": none).
        (row,) = [
            row
            for row in rows
            if row.startswith(f"| {code} {meaning}")
            and (row.split("|")[2].strip() == "—" if not types else all(t in row for t, _ in types))
        ]
        for _, scheme in types:
            assert scheme == "DCM" or scheme in row, (kind, scheme)
        assert f"({code})" in security, kind
