"""Facts owned by dicom_store_contract are not written again elsewhere: every part imports them.

A grep over the product's source (not tests, which may spell a value out to check it): the UID form, the metrics
namespace, the audit messages' own coding scheme (the SCP and the import functions build theirs in one module) and
the tracking tables' index names appear only in their owner module.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from dicom_store_contract import audit_messages, metrics, tables, uids

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("container", "functions", "template_gen", "release", "bench")

# Being rewritten elsewhere; they switch to dicom_store_contract.uids when that lands (then leave this list).
UID_FORM_PENDING: set[str] = set()


def _sources() -> dict[str, str]:
    return {
        path.relative_to(ROOT).as_posix(): path.read_text(encoding="utf-8")
        for folder in SOURCES
        for path in sorted((ROOT / folder).rglob("*.py"))
    }


def _quoted(value: str) -> re.Pattern[str]:
    return re.compile(rf"""["']{re.escape(value)}["']""")


@pytest.mark.parametrize(
    ("fact", "owner", "pattern", "pending"),
    [
        (
            "the UID form",
            "container/dicom_store_contract/uids.py",
            re.compile(re.escape(uids.UID_FORM)),
            UID_FORM_PENDING,
        ),
        ("the metrics namespace", "container/dicom_store_contract/metrics.py", _quoted(metrics.NAMESPACE), set()),
        (
            "the audit messages' own coding scheme",
            "container/dicom_store_contract/audit_messages.py",
            _quoted(audit_messages.OWN_CODES),
            set(),
        ),
        *(
            (f"the index name {name}", "container/dicom_store_contract/tables.py", _quoted(name), set())
            for name in sorted(
                {i.name for i in (*tables.INSTANCE_INDEXES, *tables.JOB_INDEXES, *tables.COMMITMENT_INDEXES)}
            )
        ),
    ],
)
def test_only_the_owner_writes_it(fact, owner, pattern, pending):
    sources = _sources()
    assert pattern.search(sources[owner]), f"{owner} no longer holds {fact}"
    copies = {name for name, text in sources.items() if pattern.search(text)} - {owner} - pending
    assert not copies, f"{fact} written outside {owner} in {sorted(copies)}: import it from there"
