"""File Meta Information elements (group 0002) at the start of a C-STORE data set, taken out as the data set streams.

A data set sent over DIMSE has no group 0002 (PS3.7 6.3.1 for the command, PS3.10 7.1: File Meta Information is
the file's, not the data set's), but some senders send a Part 10 file's meta elements along with its data set
(pynetdicom sends the group 0002 elements a Dataset holds; DCMTK's storescu those a file's data set holds). Stored
as they came, the file would have two meta groups: ``dcmdump`` warns about every element, and pydicom reads the
sender's group as the file meta, so an inner Transfer Syntax UID that differs from the negotiated one would
misdescribe the file. The receive loop writes its own File Meta Information (the negotiated transfer syntax, the
request's UIDs) ahead of the data set and drops the sender's group here: every byte after it is stored as received.

By the Part 10 rule the elements are explicit VR little endian, but a sender may encode them in the data set's own
transfer syntax: each element is read as explicit VR when its VR field holds a VR, else as implicit VR; in little
endian, or in big endian where that is negotiated. Memory stays bounded whatever is sent: at most one element
header (12 bytes) is held across fragments, values are skipped as they arrive (the Transfer Syntax UID, at most 64
bytes, is kept to be logged), and at most ``TAGS_NAMED`` element tags are remembered.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

_BIG_ENDIAN = "1.2.840.10008.1.2.2"
_DEFLATED = "1.2.840.10008.1.2.1.99"
_TRANSFER_SYNTAX_UID = 0x0010
_UID_MAX = 64
_UNDEFINED = 0xFFFFFFFF
_LONG_LENGTH_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_VRS = _LONG_LENGTH_VRS | {
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN", b"SH", b"SL",
    b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
}  # fmt: skip
# How many dropped elements the log line names (a hostile sender may send millions of empty ones).
TAGS_NAMED = 16


class Unreadable(Exception):
    """A group 0002 element at the data set's start whose end cannot be found (undefined length)."""


@dataclass
class MetaStripper:
    """Takes the leading group 0002 elements out of one data set's fragments; the rest passes untouched."""

    big_endian: bool = False
    done: bool = False
    dropped_bytes: int = 0
    dropped_count: int = 0
    tags: list[str] = field(default_factory=list)
    transfer_syntax: str | None = None  # the inner (0002,0010), when one was dropped
    _held: bytes = b""
    _skip: int = 0
    _value: bytearray | None = None

    @classmethod
    def for_transfer_syntax(cls, transfer_syntax: str) -> MetaStripper | None:
        """None where the data set cannot be looked into as it streams (deflated: its elements are compressed)."""
        if transfer_syntax == _DEFLATED:
            return None
        return cls(big_endian=transfer_syntax == _BIG_ENDIAN)

    def feed(self, fragment: memoryview) -> list[bytes | memoryview]:
        """What of ``fragment`` (and of bytes held from earlier ones) belongs to the data set, in order; raises
        Unreadable for an element with an undefined length."""
        if self.done:
            return [fragment]
        position, size = 0, len(fragment)
        while True:
            if self._skip:
                taken = min(self._skip, size - position)
                if self._value is not None:
                    self._value += fragment[position : position + taken]
                self._skip -= taken
                self.dropped_bytes += taken
                position += taken
                if self._skip:
                    return []
                self._value_done()
            probe = self._held + bytes(fragment[position : position + 12 - len(self._held)])
            if len(probe) >= 2 and not self._group_0002(probe):
                # The data set proper: it and all that follows pass untouched.
                self.done = True
                held, self._held = self._held, b""
                rest = fragment[position:]
                return [part for part in (held, rest) if len(part)]
            header = self._header(probe)
            if header is None:
                # Fewer than 12 bytes: the fragment ended inside what may be an element header.
                self._held = probe
                return []
            element, header_length, length = header
            position += header_length - len(self._held)
            self._held = b""
            if length == _UNDEFINED:
                raise Unreadable(f"(0002,{element:04X}) has an undefined length")
            self.dropped_bytes += header_length
            self.dropped_count += 1
            if len(self.tags) < TAGS_NAMED:
                self.tags.append(f"(0002,{element:04X})")
            self._skip = length
            self._value = bytearray() if element == _TRANSFER_SYNTAX_UID and length <= _UID_MAX else None
            if not length:
                self._value_done()

    def finish(self) -> list[bytes]:
        """The data set ended: bytes still held (a data set shorter than an element header) belong to it."""
        self.done = True
        held, self._held = self._held, b""
        return [held] if held else []

    def _value_done(self) -> None:
        if self._value is not None:
            self.transfer_syntax = bytes(self._value).rstrip(b"\0 ").decode("latin-1")
            self._value = None

    def _group_0002(self, probe: bytes) -> bool:
        return probe[:2] == b"\x02\x00" or (self.big_endian and probe[:2] == b"\x00\x02")

    def _header(self, probe: bytes) -> tuple[int, int, int] | None:
        """(element, header length, value length) of the group 0002 element ``probe`` starts; None when more bytes
        are needed to tell."""
        if len(probe) < 8:
            return None
        order = "<" if probe[:2] == b"\x02\x00" else ">"
        (element,) = struct.unpack_from(order + "H", probe, 2)
        vr = probe[4:6]
        if vr in _LONG_LENGTH_VRS:
            if len(probe) < 12:
                return None
            return element, 12, struct.unpack_from(order + "L", probe, 8)[0]
        if vr in _VRS:
            return element, 8, struct.unpack_from(order + "H", probe, 6)[0]
        return element, 8, struct.unpack_from(order + "L", probe, 4)[0]  # implicit VR
