"""header.py finds the elements a C-STORE is checked by exactly as pydicom's read_partial does, or defers to it."""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import pytest
from dicom_store_scp import engine, handlers, header
from pydicom.data import get_testdata_files
from pydicom.filereader import read_partial
from support import fuzz, wire

_WANTED = {int(tag) for tag in handlers._HEADER_TAGS}
_LAST = int(handlers._LAST_HEADER_TAG)


def _part10(path: Path) -> tuple[str, bytes] | None:
    """(transfer syntax, data set bytes) of a Part 10 test file, or None."""
    raw = path.read_bytes()
    if raw[128:132] != b"DICM" or raw[132:136] != b"\x02\x00\x00\x00":
        return None
    (meta_length,) = struct.unpack_from("<L", raw, 140)
    meta = raw[144 : 144 + meta_length]
    offset = 0
    syntax = None
    while offset + 8 <= len(meta):
        group, element, vr, short = struct.unpack_from("<HH2sH", meta, offset)
        if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT"):
            (length,) = struct.unpack_from("<L", meta, offset + 8)
            start = offset + 12
        else:
            length, start = short, offset + 8
        if (group, element) == (0x0002, 0x0010):
            syntax = meta[start : start + length].decode().rstrip("\0 ")
        offset = start + length
    return (syntax, raw[144 + meta_length :]) if syntax else None


def _spooled(tmp_path: Path, name: str, syntax: str, data_set: bytes) -> Path:
    spool = tmp_path / f"{name}.dcm"
    spool.write_bytes(engine.file_meta("1.2.3", "1.2.3.4", syntax) + data_set)
    return spool


def _values(dataset) -> dict[int, object]:
    return {tag: handlers._element_text(dataset, tag) for tag in handlers._HEADER_TAGS}


_FILES = sorted(Path(p) for p in get_testdata_files("*.dcm"))


@pytest.mark.parametrize("source", _FILES, ids=[path.name for path in _FILES])
def test_the_walker_reads_what_read_partial_reads_or_defers(tmp_path, source):
    found = _part10(source)
    if found is None:
        pytest.skip("not a Part 10 file with File Meta Information")
    syntax, data_set = found
    spool = _spooled(tmp_path, source.stem, syntax, data_set)
    walked = header.read_header(spool, syntax, _WANTED, _LAST)
    if syntax in header._NOT_WALKED:
        assert walked is None
    if walked is None:
        return
    with spool.open("rb") as handle:
        expected = read_partial(handle, stop_when=handlers._stop_after_header, specific_tags=handlers._HEADER_TAGS)
    assert _values(walked) == _values(expected)
    assert {tag for tag in handlers._HEADER_TAGS if tag in walked} == {
        tag for tag in handlers._HEADER_TAGS if tag in expected
    }


def test_ordinary_headers_are_walked_not_deferred(tmp_path):
    for name in ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm"):
        [source] = [path for path in _FILES if path.name == name]
        syntax, data_set = _part10(source)  # type: ignore[misc]
        assert header.read_header(_spooled(tmp_path, name, syntax, data_set), syntax, _WANTED, _LAST) is not None


@pytest.mark.parametrize(
    ("syntax", "data_set"),
    [
        ("1.2.840.10008.1.2.1", b"\x08\x00\x16\x00\x1a\x00\x00\x00" + b"1" * 26),  # implicit where explicit agreed
        ("1.2.840.10008.1.2", b"\x08\x00\x16\x00UI\x1a\x00" + b"1" * 26),  # explicit where implicit agreed
        ("1.2.840.10008.1.2.1", b"\x08\x00\x16\x00U\x09\x02\x001\x00"),  # a VR that does not exist
        ("1.2.840.10008.1.2.1", b"\x08\x00\x16\x00UI\x40\x00" + b"1" * 10),  # a value past the end
        ("1.2.840.10008.1.2.1", b"\x08\x00\x16\x00UI"),  # a header cut off
        ("1.2.840.10008.1.2.2", b"\x00\x08\x00\x16UI\x00\x02" + b"1\0"),  # big endian
        ("1.2.840.10008.1.2.1", b"\x88\x00\x00\x02SQ\x00\x00\xff\xff\xff\xff\xfe\xff\xdd\xe0\x00\x00\x00\x00"),
    ],
    ids=["implicit-in-explicit", "explicit-in-implicit", "unknown-vr", "past-the-end", "cut-off", "big-endian", "sq"],
)
def test_what_the_walker_is_not_sure_about_is_left_to_pydicom(tmp_path, syntax, data_set):
    assert header.read_header(_spooled(tmp_path, "odd", syntax, data_set), syntax, _WANTED, _LAST) is None


def test_undefined_length_sequences_before_the_wanted_elements_are_skipped(tmp_path):
    def explicit(group: int, element: int, vr: bytes, value: bytes) -> bytes:
        return struct.pack("<HH2sH", group, element, vr, len(value)) + value

    nested_item = (
        b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + explicit(0x0008, 0x1150, b"UI", b"1.2\0") + b"\xfe\xff\x0d\xe0" + bytes(4)
    )
    nested = struct.pack("<HH2sHL", 0x0008, 0x1199, b"SQ", 0, 0xFFFFFFFF) + nested_item + b"\xfe\xff\xdd\xe0" + bytes(4)
    item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + nested + b"\xfe\xff\x0d\xe0" + bytes(4)
    defined_item = b"\xfe\xff\x00\xe0" + struct.pack("<L", 12) + explicit(0x0008, 0x1150, b"UI", b"1.2\0")
    sequence = struct.pack("<HH2sHL", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF) + item + defined_item
    sequence += b"\xfe\xff\xdd\xe0" + bytes(4)
    data_set = (
        explicit(0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.2\0")
        + explicit(0x0008, 0x0018, b"UI", b"1.2.3.4\0")
        + sequence
        + explicit(0x0020, 0x000D, b"UI", b"1.2.3.5\0")
        + explicit(0x0020, 0x000E, b"UI", b"1.2.3.6\0")
    )
    spool = _spooled(tmp_path, "sequences", "1.2.840.10008.1.2.1", data_set)
    walked = header.read_header(spool, "1.2.840.10008.1.2.1", _WANTED, _LAST)
    assert walked is not None
    with spool.open("rb") as handle:
        expected = read_partial(handle, stop_when=handlers._stop_after_header, specific_tags=handlers._HEADER_TAGS)
    assert _values(walked) == _values(expected)
    assert _values(walked)[handlers._SERIES_INSTANCE_UID] == "1.2.3.6"


def _store_data_set(payload: bytes) -> tuple[int | None, bytes]:
    """(presentation context, data set bytes) of a fuzz case's C-STORE: its data PDVs joined."""
    offset, data, context = 0, b"", None
    while offset + 6 <= len(payload):
        pdu_type, _, length = struct.unpack_from(">BBL", payload, offset)
        body, offset = payload[offset + 6 : offset + 6 + length], offset + 6 + length
        position = 0
        while pdu_type == wire.P_DATA and position + 6 <= len(body):
            size, pdv_context, control = struct.unpack_from(">LBB", body, position)
            if not control & wire.COMMAND:
                data, context = data + body[position + 6 : position + 4 + size], pdv_context
            position += 4 + size
    return context, data


def _outcome(dataset) -> tuple[str, object]:
    try:
        return "read", {int(tag): handlers._element_text(dataset, tag) for tag in handlers._HEADER_TAGS}
    except Exception as error:  # what handlers.handle_store answers 0xC000 for
        return "error", type(error).__name__


def test_the_walker_agrees_with_read_partial_on_the_fuzzers_data_sets(tmp_path):
    """Every data set of the fuzz suite's seeded corpus (tests/fuzz): where the walker reads a header, the values
    (or the exception) are pydicom's, so every C-STORE is answered with the status it got before."""
    syntaxes = {wire.STORE_CONTEXT: wire.EXPLICIT_LE, fuzz.CT_IMPLICIT_CONTEXT: wire.IMPLICIT_LE}
    walked = 0
    # pydicom's warnings as the SCP treats them (handlers.py): ignored, but for the wrong VR encoding's, an error.
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
    warnings.filterwarnings("error", message=r"Expected (explicit|implicit) VR, but found", category=UserWarning)
    for case in fuzz.cases(9, 900, "dataset"):
        context, data_set = _store_data_set(case.payload)
        if context not in syntaxes:
            continue
        syntax = syntaxes[context]
        spool = _spooled(tmp_path, "case", syntax, data_set)
        try:
            with spool.open("rb") as handle:
                expected = _outcome(
                    read_partial(handle, stop_when=handlers._stop_after_header, specific_tags=handlers._HEADER_TAGS)
                )
        except Exception as error:
            expected = ("error", type(error).__name__)
        try:
            found = header.read_header(spool, syntax, _WANTED, _LAST)
        except Exception as error:
            walked += 1
            assert ("error", type(error).__name__) == expected, case.label
            continue
        if found is not None:
            walked += 1
            assert _outcome(found) == expected, case.label
    assert walked > 400  # most of the corpus is walked, not deferred
