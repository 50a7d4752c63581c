"""header.py finds the elements a C-STORE is checked by exactly as pydicom's read_partial does, or defers to it."""

from __future__ import annotations

import contextlib
import random
import re
import struct
import warnings
from pathlib import Path

import pytest
from dicom_store_scp import engine, handlers, header, validation
from pydicom.data import get_testdata_files
from pydicom.datadict import dictionary_VR
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


def _pydicom_reading(spool: Path) -> tuple[str, object]:
    """What the handler read before header.py's plain values: pydicom's read_partial, its values and the checks."""
    try:
        with spool.open("rb") as handle:
            dataset = read_partial(handle, stop_when=handlers._stop_after_header, specific_tags=handlers._HEADER_TAGS)
        values = {
            int(tag): (handlers._uid_as_sent if tag in handlers._UID_TAGS else handlers._element_text)(dataset, tag)
            for tag in handlers._HEADER_TAGS
        }
    except Exception as error:
        return "error", type(error).__name__
    tags = dataset.keys()  # iterating the Dataset itself would convert every element
    elements = {int(tag): dataset.get_item(tag).value for tag in tags}
    return "read", (values, validation.check(elements), validation.limited_support(elements))


def _handler_reading(spool: Path, syntax: str) -> tuple[str, object]:
    try:
        values, elements = handlers._read_header(spool, syntax)
    except Exception as error:
        return "error", type(error).__name__
    return "read", ({int(tag): text for tag, text in values.items()}, validation.check(elements),
                    validation.limited_support(elements))  # fmt: skip


# Values of every kind a sender might put in the checked elements: plain, padded, multi-valued, non-ASCII, escape
# sequences, control characters, numbers that are and are not.
_PIECES = [b"1.2.840.10008.5.1.4.1.1.2", b"1.2.3", b"20200101", b"2020.02.30", b"101010.5", b"ABC^DEF", b"12",
           b"-3", b" 7 ", b"1e3", b"BINARY", b"O", b"x" * 70, b"\\", b"\0", b" ", b"\x1b$B", b"\xe9", b"\xc3\xa9",
           b"\t", b"\x7f", b"^=", b""]  # fmt: skip
_PLAIN = re.compile(rb"[ -\[\]-~]*")
_CHARACTER_SETS = [
    None,
    None,
    None,
    b"ISO_IR 100",
    b"ISO_IR 192",
    b"ISO 2022 IR 87",
    b"GB18030",
    b"ISO_IR 13",
    b"NOT A SET",
]


def _generated_data_set(rng: random.Random, implicit: bool) -> bytes:
    def element(tag: int, vr: str, value: bytes) -> bytes:
        if len(value) % 2:
            value += b"\0" if vr == "UI" else b" "
        if implicit:
            return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, len(value)) + value
        if rng.random() < 0.05:
            vr = rng.choice(["LO", "UN", "SH", "UI"])  # now and then a VR other than the dictionary's
        if vr in ("UN", "UT"):
            return struct.pack("<HH2sHL", tag >> 16, tag & 0xFFFF, vr.encode(), 0, len(value)) + value
        return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(value)) + value

    character_set = rng.choice(_CHARACTER_SETS)
    out = b"" if character_set is None else element(0x00080005, "CS", character_set)
    # Half the headers are of plain pieces only, with now and then one odd piece.
    pieces = _PIECES if rng.random() < 0.5 else [piece for piece in _PIECES if _PLAIN.fullmatch(piece)]
    for tag in handlers._HEADER_TAGS:
        vr = dictionary_VR(tag)
        if vr == "SQ" or rng.random() < 0.1:
            continue
        choices = [b"12", b"-3", b" 7 "] if vr == "IS" and pieces is not _PIECES else pieces
        value = b"".join(rng.choice(choices if rng.random() < 0.99 else _PIECES) for _ in range(rng.choice([1, 1, 2])))
        if tag in handlers._UID_TAGS and rng.random() < 0.7:
            value = rng.choice([b"1.2.840.10008.5.1.4.1.1.2", b"1.2.3.4", b"1.2.3.5.6"])
        out += element(int(tag), vr, value)
    return out


def test_plain_values_are_pydicoms_values_on_a_generated_corpus(tmp_path):
    """The handler reads plain text itself (header.plain_values) and the rest through pydicom: on 3,000 generated
    headers, every value, element check and limited-support note is what pydicom's reading gives, or the same
    exception type; most of the corpus is read without pydicom."""
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
    warnings.filterwarnings("error", message=r"Expected (explicit|implicit) VR, but found", category=UserWarning)
    rng = random.Random(15)
    plain = 0
    for number in range(3000):
        implicit = number % 3 == 0
        syntax = wire.IMPLICIT_LE if implicit else wire.EXPLICIT_LE
        spool = _spooled(tmp_path, "generated", syntax, _generated_data_set(rng, implicit))
        assert _handler_reading(spool, syntax) == _pydicom_reading(spool), number
        walked = header.read_elements(spool, syntax, _WANTED, _LAST)
        if walked is not None and header.plain_values(walked, handlers._HEADER_TAG_NUMBERS, handlers._UID_TAG_NUMBERS):
            plain += 1
    assert 150 < plain < 2850  # both ways of reading are exercised


def test_plain_values_agree_on_the_fuzzers_data_sets_and_pydicoms_files(tmp_path):
    syntaxes = {wire.STORE_CONTEXT: wire.EXPLICIT_LE, fuzz.CT_IMPLICIT_CONTEXT: wire.IMPLICIT_LE}
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
    warnings.filterwarnings("error", message=r"Expected (explicit|implicit) VR, but found", category=UserWarning)
    spools = []
    for case in fuzz.cases(9, 900, "dataset"):
        context, data_set = _store_data_set(case.payload)
        if context in syntaxes:
            spools.append((case.label, syntaxes[context], data_set))
    for source in _FILES:
        found = _part10(source)
        if found is not None:
            spools.append((source.name, *found))
    for label, syntax, data_set in spools:
        spool = _spooled(tmp_path, "case", syntax, data_set)
        assert _handler_reading(spool, syntax) == _pydicom_reading(spool), label


def _walk_result(walked):
    return None if walked is None else (walked.implicit, walked.found)


def test_a_head_of_any_length_walks_to_what_the_file_walks_to(tmp_path):
    """The owned receive path hands the handler the spool file's first bytes (engine.HEAD_BYTES): walking them, cut
    anywhere (inside the meta, an element header, a value, past the last wanted tag, the whole file), finds what
    walking the file finds, or the same None; on the generated corpus, the fuzzer's data sets and pydicom's files."""
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
    rng = random.Random(151)
    spools = []
    for number in range(400):
        implicit = number % 3 == 0
        spools.append((wire.IMPLICIT_LE if implicit else wire.EXPLICIT_LE, _generated_data_set(rng, implicit)))
    syntaxes = {wire.STORE_CONTEXT: wire.EXPLICIT_LE, fuzz.CT_IMPLICIT_CONTEXT: wire.IMPLICIT_LE}
    for case in fuzz.cases(9, 300, "dataset"):
        context, data_set = _store_data_set(case.payload)
        if context in syntaxes:
            spools.append((syntaxes[context], data_set))
    spools += [found for found in map(_part10, _FILES) if found is not None]
    walked_in_head = 0
    for syntax, data_set in spools:
        spool = _spooled(tmp_path, "head", syntax, data_set)
        whole = spool.read_bytes()
        expected = _walk_result(header.read_elements(spool, syntax, _WANTED, _LAST))
        cuts = {0, 100, 143, 144, len(whole), len(whole) - 1, *(rng.randrange(len(whole) + 1) for _ in range(12))}
        for cut in sorted(cuts):
            head = whole[:cut]
            walked = header.read_elements(spool, syntax, _WANTED, _LAST, head, len(whole))
            assert _walk_result(walked) == expected, (syntax, cut)
        # The walk over a head alone, with the file gone, shows which heads held the whole header.
        gone = tmp_path / "gone.dcm"
        with contextlib.suppress(FileNotFoundError):
            walked_in_head += header.read_elements(gone, syntax, _WANTED, _LAST, whole, len(whole)) is not None
    assert walked_in_head > len(spools) // 2  # most are walked in memory, never reopened
