"""The fake StoreDICOM's streaming mode (support/fake_stow.py), which bench/stow_memory.py uses so that a 1 GB request
costs the bench no memory: it must read the same parts, byte for byte, as the mode that holds them."""

from __future__ import annotations

import hashlib
import os

import pytest
from support.fake_stow import FakeStow, _parts, _StreamedParts
from support.scp import sample_file, storescu

FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}
BOUNDARY = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def _body(parts: list[bytes]) -> bytes:
    head = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    middle = f"\r\n--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    return head + middle.join(parts) + f"\r\n--{BOUNDARY}--\r\n".encode()


# Parts that look like the framing: a line break and dashes, the boundary without its line break, nothing at all.
PARTS = [os.urandom(3000) + b"\r\n--" + os.urandom(100), b"x--" + BOUNDARY.encode() + b"x", b"", os.urandom(70000)]


@pytest.mark.parametrize("piece", [1, 7, 38, 39, 40, 4096, 1 << 20])
def test_streamed_parts_are_the_held_ones_whatever_the_piece_size(piece):
    body = _body(PARTS)
    streamed = _StreamedParts(CONTENT_TYPE)
    for start in range(0, len(body), piece):
        streamed.feed(body[start : start + piece])
    streamed.finish()

    assert streamed.problems == []
    assert _parts(CONTENT_TYPE, body) == PARTS
    assert [(p.size, p.digest.hexdigest()) for p in streamed.parts] == [
        (len(part), hashlib.sha256(part).hexdigest()) for part in PARTS
    ]
    assert [bytes(p.head) for p in streamed.parts] == [part[: 1 << 20] for part in PARTS]


def test_a_body_cut_short_is_a_problem():
    streamed = _StreamedParts(CONTENT_TYPE)
    streamed.feed(_body(PARTS)[:-10])
    streamed.finish()
    assert streamed.problems == ["no close delimiter"]


def test_the_streaming_fake_stores_what_the_holding_fake_stores(start_scp):
    sources = [sample_file("CT_small.dcm"), sample_file("MR_small.dcm")]
    digests = []
    for streaming in (False, True):
        fake = FakeStow()
        fake.streaming = streaming
        try:
            scp = start_scp("--ingest-mode", "stow", "--ahi-stow-url", fake.base_url, env=FAKE_CREDENTIALS)
            assert storescu(scp.port, *sources).statuses == [0, 0]
            assert scp.stop() == 0
        finally:
            fake.stop()
        assert [request.problems for request in fake.requests] == [[], []]
        assert (fake.held == {}) is streaming
        digests.append(fake.digests)
    held, streamed = digests
    assert len(streamed) == 2 and streamed == held
