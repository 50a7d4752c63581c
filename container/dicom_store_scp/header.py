"""The few header elements a C-STORE is checked by, found without decoding the rest (pydicom only for the odd case).

pydicom's ``read_partial`` builds an element object for every element it passes on the way to the last one the
handler needs: about 1.6 ms of CPU for an ordinary CT header, most of an instance's cost once the receive loop is
lean (docs/benchmarks.md). Here the data set of a spooled Part 10 file is walked with ``struct`` over a memory
map: element headers are read, values skipped, and only the wanted elements (plus Specific Character Set, which
decodes them) are kept, as pydicom's own raw elements, in a pydicom ``Dataset``; they are decoded exactly as
``read_partial`` would decode them, when first read.

Anything this walker is not sure about returns ``None``, and the caller reads the file with pydicom as before:
a transfer syntax other than implicit or explicit VR little endian encodings (big endian, deflate), a first
element encoded the other way than negotiated (pydicom's warning, an error here), an unknown VR, a value or
header running past the end of the file, a wanted element that is (or, in implicit VR, may be) a sequence,
malformed sequence items.
"""

from __future__ import annotations

import functools
import mmap
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_has_tag, dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.values import convert_string

_IMPLICIT_LE = "1.2.840.10008.1.2"
_NOT_WALKED = {"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}  # big endian, deflated

_TAG = struct.Struct("<HH")
_IMPLICIT = struct.Struct("<HHL")
_EXPLICIT = struct.Struct("<HH2sH")
_LONG = struct.Struct("<L")
_LONG_LENGTH_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_VRS = _LONG_LENGTH_VRS | {
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN", b"SH", b"SL",
    b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
}  # fmt: skip
# An explicit VR element's header length by its VR (12: a 4-byte value length follows two reserved bytes).
_HEADER_LENGTHS = {vr: 12 if vr in _LONG_LENGTH_VRS else 8 for vr in _VRS}
_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_SPECIFIC_CHARACTER_SET = 0x00080005
# Nesting beyond this is not walked (pydicom reads it).
_DEPTH_LIMIT = 16


class _Unsure(Exception):
    """Not a case this walker reads: pydicom does."""


@dataclass(frozen=True)
class Walked:
    """The wanted elements found, as the data set has them: tag -> (explicit VR or None, length, value, offset)."""

    implicit: bool
    found: dict[int, tuple[bytes | None, int, bytes, int]]

    def raw_values(self) -> dict[int, bytes]:
        """Each found element's value bytes, as received (what validation.py measures)."""
        return {tag: element[2] for tag, element in self.found.items()}


def read_elements(
    path: Path,
    transfer_syntax: str,
    wanted: set[int] | frozenset[int],
    last: int,
    head: bytes | bytearray | None = None,
    size: int = 0,
) -> Walked | None:
    """The ``wanted`` top-level elements up to tag ``last``, as received; None: read the file with pydicom.

    ``head``, when given, is the file's first bytes as the receive loop wrote them (the whole file when it is that
    short; ``size``, the file's, says so): the walk runs over it in memory, and reads the file only when the
    header runs past it (or the walk is unsure there: the file decides).
    """
    if transfer_syntax in _NOT_WALKED:
        return None
    implicit = transfer_syntax == _IMPLICIT_LE
    kept, sequences = _kept(wanted if isinstance(wanted, frozenset) else frozenset(wanted))
    if head is not None and len(head) >= 144:
        try:
            partial = len(head) != size
            return Walked(implicit, _walk(head, len(head), implicit, kept, sequences, last, partial=partial))
        except (_Unsure, struct.error):
            if not partial:
                return None
            # past the head, or unsure within it: the file decides
    with path.open("rb") as handle:
        size = handle.seek(0, 2)
        if size < 144:
            return None
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            try:
                return Walked(implicit, _walk(data, size, implicit, kept, sequences, last))
            except (_Unsure, struct.error):
                return None


def read_header(path: Path, transfer_syntax: str, wanted: set[int], last: int) -> Dataset | None:
    """The same as pydicom raw elements in a ``Dataset``, decoded exactly as ``read_partial`` would on first read."""
    walked = read_elements(path, transfer_syntax, wanted, last)
    return None if walked is None else as_dataset(walked)


def as_dataset(walked: Walked) -> Dataset:
    implicit = walked.implicit
    header = Dataset(
        {
            Tag(tag): RawDataElement(
                Tag(tag), None if vr is None else vr.decode("ascii"), length, value, value_at, implicit, True
            )
            for tag, (vr, length, value, value_at) in walked.found.items()
        }  # pydicom keeps raw elements until first read
    )
    header.set_original_encoding(implicit, True)
    return header


# -- values without pydicom -----------------------------------------------------------------------------------------

# Character sets in which printable ASCII is itself (pydicom decodes such a value to the same text).
_ASCII_CHARACTER_SETS = {b"", b"ISO_IR 6", b"ISO_IR 100", b"ISO_IR 192"}
# Printable ASCII but for the backslash (a value delimiter: pydicom makes a multi-valued element of it).
_PLAIN = re.compile(rb"[\x20-\x5b\x5d-\x7e]*")
_INTEGER = re.compile(rb" *[+-]?[0-9]+ *")
_SIMPLE_VRS = {"AE", "AS", "CS", "DA", "DT", "IS", "LO", "PN", "SH", "TM", "UI"}


def plain_values(walked: Walked, tags: list[int], uid_tags: set[int]) -> dict[int, str] | None:
    """Each of ``tags``' text as handlers.py reads it through pydicom, when it can be read without it; else None.

    Without pydicom means: every found element is a single-valued text element of its dictionary VR, in printable
    ASCII (trailing NUL padding aside), under a character set in which ASCII is ASCII. pydicom decodes such a
    value without raising, to the same text (tests/container/test_header_walker.py compares both on every case
    the fuzz corpus and a generated one hold). UIDs are the bytes as sent less trailing NUL and space padding,
    as handlers.py judges them; other values lose their padding and surrounding spaces, as pydicom gives them.
    """
    found = walked.found
    charset = found.get(_SPECIFIC_CHARACTER_SET)
    if charset is not None and (
        charset[0] not in (None, b"CS") or charset[2].rstrip(b"\0 ") not in _ASCII_CHARACTER_SETS
    ):
        return None  # pydicom reads it by its VR when it decodes text (a US of odd length raises, say)
    values: dict[int, str] = {}
    for tag in tags:
        element = found.get(tag)
        if element is None:
            values[tag] = ""
            continue
        vr, _, raw, _ = element
        expected = _dictionary_vr(tag)
        if expected not in _SIMPLE_VRS or (vr is not None and vr != expected.encode("ascii")):
            return None
        text = raw.rstrip(b"\0")
        if not _PLAIN.fullmatch(text):
            return None
        if expected == "PN" and b"=" in text:
            return None  # pydicom's PersonName drops empty component groups: "^=" reads "^"
        if expected == "IS" and text.strip() and not _INTEGER.fullmatch(text):
            return None  # pydicom reads "1e3" as 1000 and raises for "1e400"
        values[tag] = raw.rstrip(b"\0 ").decode("ascii") if tag in uid_tags else text.decode("ascii").strip()
    return values


@functools.cache
def _dictionary_vr(tag: int) -> str:
    return dictionary_VR(tag) if dictionary_has_tag(tag) else ""


@functools.cache
def _kept(wanted: frozenset[int]) -> tuple[frozenset[int], frozenset[int]]:
    """(the wanted elements and Specific Character Set, those of them that are sequences): a data set holding one of
    these sequences is read by pydicom."""
    sequences = {tag for tag in wanted if dictionary_has_tag(tag) and dictionary_VR(tag) == "SQ"}
    return frozenset(wanted | {_SPECIFIC_CHARACTER_SET}), frozenset(sequences)


def _walk(
    data: bytes | bytearray | mmap.mmap,
    size: int,
    implicit: bool,
    wanted: frozenset[int],
    sequences: frozenset[int],
    last: int,
    partial: bool = False,
) -> dict[int, tuple[bytes | None, int, bytes, int]]:
    """The walk over ``data``, ``size`` bytes long (unpacking past it raises struct.error); ``partial``: the file goes
    on past ``size``, so reaching it is unsure."""
    # File Meta Information as engine.py and pynetdicom write it: its group length first.
    if data[128:132] != b"DICM" or data[132:140] != b"\x02\x00\x00\x00UL\x04\x00":
        raise _Unsure
    (meta_length,) = _LONG.unpack_from(data, 140)
    offset = 144 + meta_length
    if offset > size:
        raise _Unsure
    found: dict[int, tuple[bytes | None, int, bytes, int]] = {}
    if offset + 6 <= size:
        group, element = _TAG.unpack_from(data, offset)
        if group in (0x0000, 0x0002):
            raise _Unsure  # pydicom reads leading command or file meta elements its own way
        raw_vr = data[offset + 4 : offset + 6]
        looks_implicit = not (0x40 < raw_vr[0] < 0x5B and 0x40 < raw_vr[1] < 0x5B)
        if looks_implicit != implicit and (group << 16 | element) <= last:
            raise _Unsure  # pydicom's "Expected ... VR, but found" (an error in handlers.py)
    elif partial:
        raise _Unsure
    # The loop runs once per element of the header (a few hundred): kept flat, names local, one loop per encoding.
    unpack_long = _LONG.unpack_from
    vr: bytes | None = None
    if implicit:
        unpack_implicit = _IMPLICIT.unpack_from
        while offset < size:
            # Past the end, unpacking raises struct.error: unsure, as a header cut off is.
            group, element, length = unpack_implicit(data, offset)
            tag = group << 16 | element
            if tag > last:
                return found
            value_at = offset + 8
            if tag in wanted:
                _keep(data, size, found, tag, None, length, value_at, sequences)
            offset = value_at + length
            if offset > size or length == _UNDEFINED:  # a value cut off, or of undefined length
                if length != _UNDEFINED:
                    raise _Unsure
                offset = _skip_value(data, size, value_at, length, True, 0)
    else:
        unpack_explicit, header_lengths = _EXPLICIT.unpack_from, _HEADER_LENGTHS
        while offset < size:
            group, element, vr, length = unpack_explicit(data, offset)
            tag = group << 16 | element
            header_length = header_lengths.get(vr)
            if header_length == 12:
                # Read before the stop check, as pydicom does (a header cut off here fails there too).
                (length,) = unpack_long(data, offset + 8)
            elif header_length is None:
                if tag <= last:
                    raise _Unsure
                return found
            if tag > last:
                return found
            value_at = offset + header_length
            if tag in wanted:
                _keep(data, size, found, tag, vr, length, value_at, sequences)
            offset = value_at + length
            if offset > size or length == _UNDEFINED:
                if length != _UNDEFINED:
                    raise _Unsure
                offset = _skip_value(data, size, value_at, length, False, 0)
    if partial:
        raise _Unsure  # the head ended before the last wanted tag: the rest is in the file
    return found


def _keep(
    data: bytes | bytearray | mmap.mmap,
    size: int,
    found: dict[int, tuple[bytes | None, int, bytes, int]],
    tag: int,
    vr: bytes | None,
    length: int,
    value_at: int,
    sequences: frozenset[int],
) -> None:
    if tag in sequences or length == _UNDEFINED or vr == b"SQ" or value_at + length > size:
        raise _Unsure
    if tag == _SPECIFIC_CHARACTER_SET:
        # pydicom reads the character set as it passes it (raising on a value it cannot use): so here.
        convert_encodings(convert_string(bytes(data[value_at : value_at + length]), True))
    found[tag] = (vr, length, bytes(data[value_at : value_at + length]), value_at)


def _element_header(data: bytes | bytearray | mmap.mmap, offset: int, implicit: bool) -> tuple[bytes | None, int, int]:
    """(VR or None when implicit, value length, where the value starts)."""
    if implicit:
        _, _, length = _IMPLICIT.unpack_from(data, offset)
        return None, length, offset + 8
    _, _, vr, short = _EXPLICIT.unpack_from(data, offset)
    if vr not in _VRS:
        raise _Unsure
    if vr in _LONG_LENGTH_VRS:
        (length,) = _LONG.unpack_from(data, offset + 8)
        return vr, length, offset + 12
    return vr, short, offset + 8


def _skip_value(
    data: bytes | bytearray | mmap.mmap, size: int, value_at: int, length: int, implicit: bool, depth: int
) -> int:
    """Where the element whose value starts at ``value_at`` ends (past its delimiter when of undefined length)."""
    if length != _UNDEFINED:
        end = value_at + length
        if end > size:
            raise _Unsure
        return end
    if depth >= _DEPTH_LIMIT:
        raise _Unsure
    # A sequence of undefined length (PS3.5 7.5.2): items, each of defined or undefined length, then a delimiter.
    offset = value_at
    while True:
        if offset + 8 > size:
            raise _Unsure
        group, element, item_length = _IMPLICIT.unpack_from(data, offset)
        tag = group << 16 | element
        if tag == _SEQUENCE_END:
            return offset + 8
        if tag != _ITEM:
            raise _Unsure
        offset += 8
        if item_length != _UNDEFINED:
            offset += item_length
            if offset > size:
                raise _Unsure
            continue
        # An item of undefined length: its elements (nested sequences inside), then an item delimiter.
        while True:
            if offset + 8 > size:
                raise _Unsure
            group, element = _TAG.unpack_from(data, offset)
            if group << 16 | element == _ITEM_END:
                offset += 8
                break
            _, nested_length, nested_at = _element_header(data, offset, implicit)
            offset = _skip_value(data, size, nested_at, nested_length, implicit, depth + 1)
