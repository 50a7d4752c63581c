"""The transfer syntaxes this SCP accepts: exactly those AWS HealthImaging can import.

Source: the AHI developer guide, "Supported transfer syntaxes" (``SOURCE``). Anything else is declined at
association negotiation, so nothing is acknowledged that the import would reject later. Keep this the only list:
the SCP's presentation contexts and the conformance statement (docs/conformance.md 2.2) both come from it.

The guide marks with an asterisk the syntaxes whose files AHI stores in their original encoding; the others it
transcodes to its storage format (HTJ2K lossless by default). Either way the SCP stores the bytes as received.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.uid import UID

SOURCE = "https://docs.aws.amazon.com/healthimaging/latest/devguide/supported-transfer-syntaxes.html"

STORED_AS_RECEIVED = "stored as received"
TRANSCODED = "transcoded by AHI"


@dataclass(frozen=True)
class TransferSyntax:
    uid: UID
    name: str
    # What AHI does with a file in this syntax at import: STORED_AS_RECEIVED or TRANSCODED.
    at_import: str
    note: str = ""


def _row(uid: str, name: str, at_import: str, note: str = "") -> TransferSyntax:
    return TransferSyntax(UID(uid), name, at_import, note)


TABLE = (
    _row("1.2.840.10008.1.2", "Implicit VR Little Endian", TRANSCODED),
    _row(
        "1.2.840.10008.1.2.1",
        "Explicit VR Little Endian",
        TRANSCODED,
        "binary segmentations are stored as received",
    ),
    _row("1.2.840.10008.1.2.1.99", "Deflated Explicit VR Little Endian", TRANSCODED),
    _row("1.2.840.10008.1.2.2", "Explicit VR Big Endian (retired)", TRANSCODED),
    _row("1.2.840.10008.1.2.4.50", "JPEG Baseline (Process 1)", STORED_AS_RECEIVED),
    _row("1.2.840.10008.1.2.4.51", "JPEG Extended (Processes 2 & 4)", TRANSCODED),
    _row("1.2.840.10008.1.2.4.57", "JPEG Lossless, Non-Hierarchical (Process 14)", TRANSCODED),
    _row("1.2.840.10008.1.2.4.70", "JPEG Lossless, First-Order Prediction (Process 14, SV1)", TRANSCODED),
    _row("1.2.840.10008.1.2.4.80", "JPEG-LS Lossless", TRANSCODED),
    _row("1.2.840.10008.1.2.4.81", "JPEG-LS Near-Lossless", TRANSCODED),
    _row("1.2.840.10008.1.2.4.90", "JPEG 2000 Lossless Only", TRANSCODED),
    _row("1.2.840.10008.1.2.4.91", "JPEG 2000", STORED_AS_RECEIVED),
    _row("1.2.840.10008.1.2.4.92", "JPEG 2000 Part 2 Multi-component, Lossless Only", TRANSCODED),
    _row("1.2.840.10008.1.2.4.93", "JPEG 2000 Part 2 Multi-component", TRANSCODED),
    _row("1.2.840.10008.1.2.4.100", "MPEG2 Main Profile @ Main Level", STORED_AS_RECEIVED),
    _row("1.2.840.10008.1.2.4.101", "MPEG2 Main Profile @ High Level", STORED_AS_RECEIVED),
    _row("1.2.840.10008.1.2.4.102", "MPEG-4 AVC/H.264 High Profile / Level 4.1", STORED_AS_RECEIVED),
    _row("1.2.840.10008.1.2.4.103", "MPEG-4 AVC/H.264 BD-compatible High Profile / Level 4.1", STORED_AS_RECEIVED),
    _row("1.2.840.10008.1.2.4.104", "MPEG-4 AVC/H.264 High Profile / Level 4.2 For 2D Video", STORED_AS_RECEIVED),
    _row("1.2.840.10008.1.2.4.105", "MPEG-4 AVC/H.264 High Profile / Level 4.2 For 3D Video", STORED_AS_RECEIVED),
    _row("1.2.840.10008.1.2.4.106", "MPEG-4 AVC/H.264 Stereo High Profile / Level 4.2", STORED_AS_RECEIVED),
    # The fragmentable variants (a frame's bitstream split across fragments), in the same rows of AHI's table.
    _row("1.2.840.10008.1.2.4.100.1", "Fragmentable MPEG2 Main Profile @ Main Level", STORED_AS_RECEIVED),
    _row("1.2.840.10008.1.2.4.101.1", "Fragmentable MPEG2 Main Profile @ High Level", STORED_AS_RECEIVED),
    _row("1.2.840.10008.1.2.4.102.1", "Fragmentable MPEG-4 AVC/H.264 High Profile / Level 4.1", STORED_AS_RECEIVED),
    _row(
        "1.2.840.10008.1.2.4.103.1",
        "Fragmentable MPEG-4 AVC/H.264 BD-compatible High Profile / Level 4.1",
        STORED_AS_RECEIVED,
    ),
    _row(
        "1.2.840.10008.1.2.4.104.1",
        "Fragmentable MPEG-4 AVC/H.264 High Profile / Level 4.2 For 2D Video",
        STORED_AS_RECEIVED,
    ),
    _row(
        "1.2.840.10008.1.2.4.105.1",
        "Fragmentable MPEG-4 AVC/H.264 High Profile / Level 4.2 For 3D Video",
        STORED_AS_RECEIVED,
    ),
    _row(
        "1.2.840.10008.1.2.4.106.1",
        "Fragmentable MPEG-4 AVC/H.264 Stereo High Profile / Level 4.2",
        STORED_AS_RECEIVED,
    ),
    _row("1.2.840.10008.1.2.4.107", "HEVC/H.265 Main Profile / Level 5.1", STORED_AS_RECEIVED),
    _row("1.2.840.10008.1.2.4.108", "HEVC/H.265 Main 10 Profile / Level 5.1", STORED_AS_RECEIVED),
    _row("1.2.840.10008.1.2.4.201", "HTJ2K Lossless Only", TRANSCODED),
    _row("1.2.840.10008.1.2.4.202", "HTJ2K with RPCL Options, Lossless Only", TRANSCODED),
    _row("1.2.840.10008.1.2.4.203", "HTJ2K", STORED_AS_RECEIVED),
    _row("1.2.840.10008.1.2.5", "RLE Lossless", TRANSCODED),
)

AHI_IMPORTABLE = tuple(row.uid for row in TABLE)


def table() -> str:
    """The list as Markdown, for the conformance statement."""
    rows = ["| Transfer Syntax | UID | At import |", "|---|---|---|"]
    for row in TABLE:
        at_import = row.at_import + (f" ({row.note})" if row.note else "")
        rows.append(f"| {row.name} | {row.uid} | {at_import} |")
    return "\n".join(rows) + "\n"
