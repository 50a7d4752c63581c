"""commitment/information.py reads Action Information and writes Event Information without pydicom: it must read
what pydicom reads, write what pydicom writes, and refuse what is not a request, whatever the encoding."""

from __future__ import annotations

import io

import pytest
from dicom_store_scp.commitment import information, model
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom.dsutils import decode, encode

CT = "1.2.840.10008.5.1.4.1.1.2"


def _request(count: int, undefined: bool = False, extra: bool = False) -> Dataset:
    request = Dataset()
    request.TransactionUID = generate_uid()
    request.ReferencedSOPSequence = []
    for _ in range(count):
        item = Dataset()
        item.ReferencedSOPClassUID = CT
        item.ReferencedSOPInstanceUID = generate_uid()
        if extra:  # elements a request may carry beside the two UIDs: skipped, nested or not
            item.StorageMediaFileSetUID = generate_uid()
            item.ReferencedSeriesSequence = [Dataset()]
            item.ReferencedSeriesSequence[0].SeriesInstanceUID = generate_uid()
        item.is_undefined_length_sequence_item = undefined
        request.ReferencedSOPSequence.append(item)
    request["ReferencedSOPSequence"].is_undefined_length = undefined
    if extra:
        request.PatientID = "X" * 7
    return request


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
@pytest.mark.parametrize("undefined", [False, True], ids=["defined", "undefined"])
@pytest.mark.parametrize("extra", [False, True], ids=["plain", "with-other-elements"])
def test_a_request_reads_as_pydicom_reads_it(implicit, undefined, extra):
    data = encode(_request(50, undefined, extra), implicit, True)
    uid, references = information.read_request(data, implicit)
    expected = decode(io.BytesIO(data), implicit, True)
    assert uid == expected.TransactionUID
    assert [(r.sop_class_uid, r.sop_instance_uid) for r in references] == [
        (i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID) for i in expected.ReferencedSOPSequence
    ]


def _encoded(request: Dataset, implicit: bool = True) -> bytes:
    return encode(request, implicit, True)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda data: data[:-3], "runs past its end"),
        (lambda data: data[:40], "runs past"),
        (lambda data: data + b"\xfe\xff\x00\xe0\x00\x00\x00\x00", "item tag outside a sequence"),
        (lambda data: data + b"\x08\x00", "cut off"),
    ],
    ids=["truncated", "truncated-in-sequence", "item-at-top-level", "half-header"],
)
def test_damaged_requests_are_invalid(damage, reason):
    with pytest.raises(model.InvalidRequest, match=reason):
        information.read_request(damage(_encoded(_request(3))), True)


def test_a_uid_with_a_leading_space_is_not_trimmed_into_a_valid_one():
    request = _request(1)
    request.TransactionUID = "1.2.3"
    data = _encoded(request).replace(b"1.2.3\0", b" 1.2.3", 1)  # as sent, not as pydicom would write it
    with pytest.raises(model.InvalidRequest, match="Transaction UID"):
        information.read_request(data, True)


def test_nesting_past_the_limit_is_refused_not_followed():
    inner = Dataset()
    inner.PatientID = "x"
    for _ in range(12):
        outer = Dataset()
        outer.ReferencedSeriesSequence = [inner]
        inner = outer
    request = _request(1)
    request.ReferencedSOPSequence[0].ReferencedSeriesSequence = inner.ReferencedSeriesSequence
    with pytest.raises(model.InvalidRequest, match="nested deeper"):
        information.read_request(_encoded(request, False), False)


def test_more_references_than_the_limit_are_refused():
    with pytest.raises(model.InvalidRequest, match="references"):
        information.read_request(_encoded(_request(model.REFERENCES_LIMIT + 1)), True)


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
@pytest.mark.parametrize(("committed", "failed"), [(3, 0), (0, 2), (4, 5)])
def test_a_report_is_written_as_pydicom_writes_its_event_information(implicit, committed, failed):
    transaction = model.Transaction(
        transaction_uid=generate_uid(),
        references=[],
        calling_ae="A",
        called_ae="B",
        peer_address="127.0.0.1",
        peer_port=1,
        received_at="",
        deadline="",
    )
    transaction.committed = [{"sopClassUID": CT, "sopInstanceUID": generate_uid()} for _ in range(committed)]
    transaction.failed = [
        {"sopClassUID": CT, "sopInstanceUID": generate_uid(), "failureReason": model.NO_SUCH_OBJECT_INSTANCE}
        for _ in range(failed)
    ]
    event_type, data = information.report(transaction, implicit)

    expected = Dataset()
    expected.TransactionUID = transaction.transaction_uid
    for keyword, entries in (
        ("ReferencedSOPSequence", transaction.committed),
        ("FailedSOPSequence", transaction.failed),
    ):
        if entries:
            items = []
            for entry in entries:
                item = Dataset()
                item.ReferencedSOPClassUID = entry["sopClassUID"]
                item.ReferencedSOPInstanceUID = entry["sopInstanceUID"]
                if "failureReason" in entry:
                    item.FailureReason = entry["failureReason"]
                items.append(item)
            setattr(expected, keyword, items)
    assert data == encode(expected, implicit, True)
    assert event_type == (model.EVENT_FAILURES_EXIST if failed else model.EVENT_ALL_COMMITTED)
