"""Action Information in, Event Information out (PS3.4 J.3.2.1.1, J.3.3.1.1), read and written without pydicom.

A request of 20,000 references decoded by pydicom costs about 35 MiB (a Dataset and its elements per item), and a
report of as many about 40 MiB to build and encode: twenty times its bytes, for every association that sends one at
once. Here a request costs a pair of strings per reference and a report its own bytes, so memory stays within the
bound of docs/conformance.md 2.3. Both transfer syntaxes the SOP class is offered in are little endian; explicit or
implicit VR is the caller's.

Reading checks the structure as it goes (every length within its container, items only inside sequences, nesting at
most ``_MAX_DEPTH`` deep): anything else is an ``InvalidRequest``, answered 0x0115 like any other unusable request.
"""

from __future__ import annotations

import struct

from .model import (
    EVENT_ALL_COMMITTED,
    EVENT_FAILURES_EXIST,
    REFERENCES_LIMIT,
    InvalidRequest,
    Reference,
    Transaction,
    validate_request,
)

# Elements of the two data sets (PS3.6): Transaction UID, Referenced / Failed SOP Sequence and their items' elements.
TRANSACTION_UID = 0x00081195
FAILED_SOP_SEQUENCE = 0x00081198
REFERENCED_SOP_SEQUENCE = 0x00081199
REFERENCED_SOP_CLASS_UID = 0x00081150
REFERENCED_SOP_INSTANCE_UID = 0x00081155
FAILURE_REASON = 0x00081197

_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
# Explicit VRs whose length takes 4 bytes after 2 reserved ones (PS3.5 7.1.2).
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
# Sequences an implicit VR data set can only be known by (their tag): the ones read here.
_SEQUENCES = frozenset({REFERENCED_SOP_SEQUENCE, FAILED_SOP_SEQUENCE})
# Nesting deeper than any storage commitment request needs (its items hold no sequences) is refused, not followed.
_MAX_DEPTH = 8

_TAG = struct.Struct("<HH")
_LENGTH = struct.Struct("<L")
_SHORT = struct.Struct("<H")

# What is read: a tag's value as bytes (None), or a sequence's items, each read for the tags given.
_Wanted = dict[int, "_Wanted | None"]
_Found = dict[int, "bytes | list[_Found]"]
_ITEM_WANTED: _Wanted = {REFERENCED_SOP_CLASS_UID: None, REFERENCED_SOP_INSTANCE_UID: None}
_REQUEST_WANTED: _Wanted = {TRANSACTION_UID: None, REFERENCED_SOP_SEQUENCE: _ITEM_WANTED}


def read_request(data: bytes | bytearray | memoryview, implicit: bool) -> tuple[str, list[Reference]]:
    """The Transaction UID and referenced instances of an N-ACTION's Action Information; InvalidRequest if unusable."""
    view = memoryview(data)
    found, _ = _data_set(view, 0, len(view), len(view), implicit, 0, _REQUEST_WANTED)
    transaction_uid = _text(found.get(TRANSACTION_UID))
    items = found.get(REFERENCED_SOP_SEQUENCE)
    items = items if isinstance(items, list) else []  # (more than REFERENCES_LIMIT: refused while reading)
    references = [
        Reference(_text(item.get(REFERENCED_SOP_CLASS_UID)), _text(item.get(REFERENCED_SOP_INSTANCE_UID)))
        for item in items
    ]
    del items, found
    validate_request(transaction_uid, references)
    return transaction_uid, references


def _text(value: object) -> str:
    # DICOM pads a UID to an even length with NUL (some senders with a space): that, and nothing else, is removed, so a
    # UID with a leading or inner space stays invalid.
    if not isinstance(value, bytes):
        return ""
    return value.decode("latin-1").rstrip("\0 ")


def _header(data: memoryview, offset: int, limit: int, implicit: bool) -> tuple[int, bytes | None, int, int]:
    """(tag, explicit VR or None, value offset, value length) of the element at ``offset``."""
    if offset + 8 > limit:
        raise InvalidRequest(f"Action Information cannot be decoded: an element header at byte {offset} is cut off")
    group, element = _TAG.unpack_from(data, offset)
    tag = group << 16 | element
    if implicit or group == 0xFFFE:  # item and delimiter tags carry no VR in either syntax
        return tag, None, offset + 8, _LENGTH.unpack_from(data, offset + 4)[0]
    vr = bytes(data[offset + 4 : offset + 6])
    if vr in _LONG_VRS:
        if offset + 12 > limit:
            raise InvalidRequest(f"Action Information cannot be decoded: an element header at byte {offset} is cut off")
        return tag, vr, offset + 12, _LENGTH.unpack_from(data, offset + 8)[0]
    return tag, vr, offset + 8, _SHORT.unpack_from(data, offset + 6)[0]


def _data_set(
    data: memoryview, offset: int, end: int | None, limit: int, implicit: bool, depth: int, wanted: _Wanted
) -> tuple[_Found, int]:
    """The wanted elements of the data set from ``offset`` to ``end`` (None: to its item delimiter, within
    ``limit``), and the offset after it."""
    found: _Found = {}
    bound = limit if end is None else end
    while True:
        if end is not None and offset == end:
            return found, offset
        tag, vr, start, length = _header(data, offset, bound, implicit)
        if tag == _ITEM_END:
            if end is not None or length != 0:
                raise InvalidRequest(f"Action Information cannot be decoded: an item delimiter at byte {offset}")
            return found, start
        if tag in (_ITEM, _SEQUENCE_END):
            raise InvalidRequest(f"Action Information cannot be decoded: an item tag outside a sequence at {offset}")
        if vr == b"SQ" or length == _UNDEFINED or (vr is None and tag in _SEQUENCES):
            if vr not in (None, b"SQ"):
                raise InvalidRequest(f"Action Information cannot be decoded: ({tag >> 16:04X},{tag & 0xFFFF:04X}) "
                                     f"has VR {vr!r} and an undefined length")  # fmt: skip
            value_end = None if length == _UNDEFINED else start + length
            if value_end is not None and value_end > bound:
                raise InvalidRequest(f"Action Information cannot be decoded: a sequence runs past its end at {offset}")
            items, offset = _sequence(data, start, value_end, bound, implicit, depth + 1, wanted.get(tag))
            if tag in wanted:
                found[tag] = items
            continue
        if start + length > bound:
            raise InvalidRequest(f"Action Information cannot be decoded: an element runs past its end at {offset}")
        if tag in wanted and wanted[tag] is None:
            found[tag] = bytes(data[start : start + length])
        offset = start + length


def _sequence(
    data: memoryview, offset: int, end: int | None, limit: int, implicit: bool, depth: int, wanted: _Wanted | None
) -> tuple[list[_Found], int]:
    """A sequence's items (each read for ``wanted``; none kept when it is None), and the offset after it."""
    if depth > _MAX_DEPTH:
        raise InvalidRequest(f"Action Information cannot be decoded: sequences nested deeper than {_MAX_DEPTH}")
    items: list[_Found] = []
    bound = limit if end is None else end
    while True:
        if end is not None and offset == end:
            return items, offset
        tag, _, start, length = _header(data, offset, bound, True)
        if tag == _SEQUENCE_END:
            if end is not None or length != 0:
                raise InvalidRequest(f"Action Information cannot be decoded: a sequence delimiter at byte {offset}")
            return items, start
        if tag != _ITEM:
            raise InvalidRequest(f"Action Information cannot be decoded: a sequence holds a non-item at {offset}")
        if length == _UNDEFINED:
            found, offset = _data_set(data, start, None, bound, implicit, depth, wanted or {})
        else:
            if start + length > bound:
                raise InvalidRequest(f"Action Information cannot be decoded: an item runs past its end at {offset}")
            found, offset = _data_set(data, start, start + length, bound, implicit, depth, wanted or {})
        if wanted is not None:
            items.append(found)
            if len(items) > REFERENCES_LIMIT:
                raise InvalidRequest(f"more than {REFERENCES_LIMIT} references; at most that many in one request")


# -- the report ------------------------------------------------------------------------------------------------------


def report(transaction: Transaction, implicit: bool) -> tuple[int, bytes]:
    """Event Type ID and encoded Event Information of the transaction's N-EVENT-REPORT (PS3.4 J.3.3.1.1): the
    Transaction UID, the Failed SOP Sequence with a Failure Reason per item, the Referenced SOP Sequence (committed),
    in ascending tag order, every length defined."""
    committed = transaction.committed or []
    failed = transaction.failed or []
    out = bytearray(_element(TRANSACTION_UID, b"UI", _uid(transaction.transaction_uid), implicit))
    if failed:
        items = [
            _item(entry["sopClassUID"], entry["sopInstanceUID"], implicit, int(entry["failureReason"]))
            for entry in failed
        ]
        out += _sequence_element(FAILED_SOP_SEQUENCE, items, implicit)
    if committed:
        items = [_item(entry["sopClassUID"], entry["sopInstanceUID"], implicit) for entry in committed]
        out += _sequence_element(REFERENCED_SOP_SEQUENCE, items, implicit)
    return (EVENT_FAILURES_EXIST if failed else EVENT_ALL_COMMITTED), bytes(out)


def _uid(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw


def _element(tag: int, vr: bytes, value: bytes, implicit: bool) -> bytes:
    head = _TAG.pack(tag >> 16, tag & 0xFFFF)
    if implicit:
        return head + _LENGTH.pack(len(value)) + value
    return head + vr + _SHORT.pack(len(value)) + value


def _item(sop_class: str, sop_instance: str, implicit: bool, failure_reason: int | None = None) -> bytes:
    body = _element(REFERENCED_SOP_CLASS_UID, b"UI", _uid(sop_class), implicit)
    body += _element(REFERENCED_SOP_INSTANCE_UID, b"UI", _uid(sop_instance), implicit)
    if failure_reason is not None:
        body += _element(FAILURE_REASON, b"US", _SHORT.pack(failure_reason), implicit)
    return _TAG.pack(0xFFFE, 0xE000) + _LENGTH.pack(len(body)) + body


def _sequence_element(tag: int, items: list[bytes], implicit: bool) -> bytes:
    length = sum(len(item) for item in items)
    head = _TAG.pack(tag >> 16, tag & 0xFFFF)
    head += _LENGTH.pack(length) if implicit else b"SQ\0\0" + _LENGTH.pack(length)
    return head + b"".join(items)
