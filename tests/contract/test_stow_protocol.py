"""dicom_store_contract.stow_protocol: the StoreDICOM body both callers stream, and the response both read."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import pytest
from botocore.credentials import Credentials
from dicom_store_contract import stow_protocol
from dicom_store_contract.stow_protocol import Listed, MultipartBody, Part


def pieces(data: bytes, size: int = 7) -> Part:
    def chunks() -> Iterator[bytes]:
        for start in range(0, len(data), size):
            yield data[start : start + size]

    return Part("part", chunks)


def test_the_body_is_each_part_framed_once_and_its_signature_is_over_what_is_sent():
    body = MultipartBody([pieces(b"first instance"), pieces(b"second"), pieces(b"")])
    sent = b"".join(body.stream())
    boundary = body.boundary.encode()
    head = b"--" + boundary + b"\r\nContent-Type: application/dicom\r\n\r\n"
    assert sent == (
        head + b"first instance" + b"\r\n" + head + b"second" + b"\r\n" + head + b"\r\n--" + boundary + b"--\r\n"
    )
    assert body.length == len(sent) and body.sha256 == hashlib.sha256(sent).hexdigest()
    assert body.sizes == [14, 6, 0] and body.file_size == 20
    assert body.content_type == f'multipart/related; type="application/dicom"; boundary={body.boundary}'


def test_a_part_that_changed_size_is_never_sent_whole():
    reads = iter([b"twelve bytes", b"eleven byte"])
    body = MultipartBody([Part("spool", lambda: iter([next(reads)]))])
    with pytest.raises(OSError, match="spool changed size while sent"):
        b"".join(body.stream())


def test_the_request_is_signed_for_healthimaging_over_the_payload_hash():
    body = MultipartBody([pieces(b"instance")])
    url = "https://dicom-medical-imaging.eu-west-1.amazonaws.com/datastore/abc/studies"
    headers = stow_protocol.signed_headers(Credentials("AKID", "secret"), "eu-west-1", url, body)
    assert headers["X-Amz-Content-SHA256"] == body.sha256
    assert headers["Content-Length"] == str(body.length)
    assert headers["Accept"] == "application/dicom+json"
    authorization = headers["Authorization"]
    assert "/eu-west-1/medical-imaging/aws4_request" in authorization
    assert "x-amz-content-sha256" in authorization.split("SignedHeaders=")[1]


def _item(uid: str) -> dict:
    return {"00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]}, "00081155": {"vr": "UI", "Value": [uid]}}


def test_the_response_lists_each_instance_stored_or_failed_with_its_reason():
    stored = {**_item("1.1"), "00081190": {"vr": "UR", "Value": ["https://x/studies/1/instances/1.1?imageSetId=abc"]}}
    failed = {**_item("1.2"), "00081197": {"vr": "US", "Value": [0xA700]}}
    refused = {**_item("1.3"), "00081197": {"vr": "US", "Value": [0xC000]}}
    document = {"00081199": {"vr": "SQ", "Value": [stored]}, "00081198": {"vr": "SQ", "Value": [failed, refused]}}
    found = stow_protocol.listings(json.dumps(document).encode())
    assert found == {
        "1.1": Listed(True, "1.2.840.10008.5.1.4.1.1.2", image_set_id="abc"),
        "1.2": Listed(False, "1.2.840.10008.5.1.4.1.1.2", failure_reason=0xA700),
        "1.3": Listed(False, "1.2.840.10008.5.1.4.1.1.2", failure_reason=0xC000),
    }
    # Out of resources is worth another try; a refusal is not.
    assert stow_protocol.retry_later(0xA700) and stow_protocol.retry_later(0x0110)
    assert not stow_protocol.retry_later(0xC000) and not stow_protocol.retry_later(None)
    assert stow_protocol.describe_failure(409, found["1.3"]) == "HTTP 409, Failure Reason 0xC000"
    # Some servers wrap the object in an array; anything not DICOM JSON lists nothing.
    assert set(stow_protocol.listings(json.dumps([document]).encode())) == {"1.1", "1.2", "1.3"}
    assert stow_protocol.listings(b"<html>busy</html>") == {} and stow_protocol.listings(b"{}") == {}
    assert stow_protocol.error_message(b'{"message": "Rate exceeded"}') == "Rate exceeded"
