"""The owned data phase: P-DATA to the spool file, C-STORE and C-ECHO, release and abort, on the socket itself.

pynetdicom negotiates the association (guard.py bounds it, handlers.py applies the project's rules). Once the
A-ASSOCIATE-AC is sent, an association that negotiated only storage and verification leaves pynetdicom: its upper
layer thread stops before reading another byte (``GuardedDUL``) and the association's own thread runs
:meth:`DataPhase.run` on the socket until the association ends. An association that negotiated Storage
Commitment stays on pynetdicom's path (commitment.py needs its N-ACTION and N-EVENT-REPORT services).

What the loop does, per the DICOM upper layer state machine (PS3.8 9.2) in Sta6 "association established":

- each PDU's 6-byte header has its type and declared length checked (against MAXIMUM_PDU_SIZE for P-DATA-TF, the
  same limits and A-ABORT reasons as guard.py) before the buffer is made room for its body. One buffer serves
  the association's life: it holds the PDU in hand and at most READ_AHEAD bytes more, so a read may take several
  small PDUs at once, while what is missing of a large PDU is read exactly (grown, at most to the limit plus
  the read-ahead, when a PDU needs it);
- PDV items are parsed with ``struct``; command fragments are collected (at most ``COMMAND_SET_LIMIT`` bytes) and
  the command set (group 0000, implicit VR little endian) decoded by hand; data set fragments are written to the
  C-STORE's spool file straight from the receive buffer; the response is encoded by hand;
- A-RELEASE-RQ is answered with A-RELEASE-RP (AR-2, AR-4); a peer's A-ABORT or closed connection ends the
  association (AA-3, AA-4); any other PDU is an A-ABORT (AA-8). The SCP never requests a release itself, so a
  release collision (Sta9-Sta12) cannot arise on this path;
- the socket's own timeout is the network timeout (PS3.8's ARTIM is not running in Sta6): a peer silent for
  NETWORK_TIMEOUT seconds, between PDUs or in the middle of one, is sent A-ABORT and disconnected.

Every violation ends only this association, with a log line naming the peer; a half-received data set's spool file
is removed however the association ends.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import secrets
import socket
import ssl
import struct
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, evt

from . import guard, handlers, statuses
from .batches import Sessions
from .checksum import Crc64Nvme
from .metrics import Recorder

LOG = logging.getLogger("dicom_store_scp.engine")

_HEADER = struct.Struct(">BBL")
_PDV_HEADER = struct.Struct(">LBB")
_ELEMENT = struct.Struct("<HHL")
_US = struct.Struct("<H")

_P_DATA_TF = 0x04
_A_RELEASE_RQ = 0x05
_A_ABORT = 0x07
_A_RELEASE_RP_PDU = b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00"

# How much of each spool file's start the loop keeps in memory for the header walk (headers are a few KiB; one
# that runs past this is walked in the file).
HEAD_BYTES = 32 * 1024
# Receiving: how much more than the PDU in hand one read may take (the next PDUs, when they are already there),
# the buffer's first size (what an idle association holds; the first data grows it), and from how many missing
# bytes a read waits for exactly those (MSG_WAITALL).
READ_AHEAD = 64 * 1024
_INITIAL_BUFFER = 16 * 1024 + 6
_EXACT_READ = 32 * 1024

_C_STORE_RSP = 0x8001
_C_ECHO_RSP = 0x8030

# The implementation identity pynetdicom's spool files carried (create_file_meta's defaults).
_IMPLEMENTATION_UID = str(PYNETDICOM_IMPLEMENTATION_UID)
_IMPLEMENTATION_VERSION = str(PYNETDICOM_IMPLEMENTATION_VERSION)


@dataclass
class Settings:
    """What the data phase needs beyond the association; bound to the connection when it opens."""

    sessions: Sessions
    recorder: Recorder
    instance_limit: int
    network_timeout: float | None


class _Ended(Exception):
    """The association is over (released, aborted, or the connection is gone)."""


@dataclass
class _Store:
    """A C-STORE request whose command arrived; its data set fragments are still coming."""

    context_id: int
    message_id: int
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    refusal: int | None = None
    detail: str = ""
    path: Path | None = None
    fd: int = -1
    received_bytes: int = 0
    dropped_bytes: int = 0
    # CRC64NVME of the spool file, computed as it is written (handlers.py would read the file again for it).
    digest: Any = None
    # The spool file's first bytes (File Meta Information, then the data set's start): the header is walked here.
    head: bytearray = field(default_factory=bytearray)
    meta_length: int = 0


@dataclass
class _Request:
    """What handlers.handle_store reads of a C-STORE request."""

    AffectedSOPClassUID: str
    AffectedSOPInstanceUID: str
    MessageID: int


@dataclass
class _Context:
    transfer_syntax: str


@dataclass
class _StoreEvent:
    """The parts of pynetdicom's EVT_C_STORE event handlers.handle_store uses."""

    assoc: Any
    request: _Request
    context: _Context
    dataset_path: str
    checksum: str
    head: bytearray
    size: int


@dataclass
class _Commands:
    """Command fragments so far (bounded)."""

    data: bytearray = field(default_factory=bytearray)
    context_id: int | None = None


class DataPhase:
    """One association's data phase, run in the association's thread until the association ends."""

    def __init__(self, assoc: Any, settings: Settings, connection: socket.socket, pending: bytes = b"") -> None:
        self.assoc = assoc
        self.settings = settings
        self.connection = connection
        self.pdu_limit = guard.receive_pdu_size(assoc.acceptor.maximum_length) + guard._PDV_ITEM_HEADER
        # The peer's Maximum Length Received bounds each P-DATA-TF we send (0: no limit).
        peer_limit = int(getattr(assoc.requestor, "maximum_length", 0) or 0)
        self.send_limit = peer_limit if peer_limit >= 64 else 0
        self.contexts = {
            int(cx.context_id): (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
            for cx in assoc.accepted_contexts
            if cx.context_id is not None
        }
        # Received bytes not yet parsed are self._buffer[self._start:self._end]. It holds a whole PDU at a time, and
        # at most READ_AHEAD bytes more: grown when a PDU needs it, to the negotiated limit and no further.
        self._capacity_limit = self.pdu_limit + 6 + READ_AHEAD
        self._buffer = bytearray(max(_INITIAL_BUFFER, len(pending)))
        self._view = memoryview(self._buffer)
        self._start = 0
        self._end = len(pending)
        self._view[: len(pending)] = pending
        self._commands = _Commands()
        self._store: _Store | None = None
        self._stop_requested = False
        self._wait_all = 0
        self._finished = threading.Event()
        self._outcome = ""

    # -- the loop --------------------------------------------------------------------------------------------------

    def run(self) -> None:
        """Serve the association until it ends; report the end as pynetdicom would (EVT_RELEASED / EVT_ABORTED)."""
        try:
            self._set_timeouts()
            while True:
                self._serve_one_pdu()
        except _Ended:
            pass
        except Exception as error:  # anything unforeseen ends this association, with an answer
            LOG.debug("data phase failed", exc_info=True)
            self._abort(guard.SERVICE_PROVIDER, guard.REASON_NOT_SPECIFIED, f"{type(error).__name__}: {error}")
        finally:
            self._discard_store()
            self._finish()

    def _serve_one_pdu(self) -> None:
        if self._end - self._start < 6:
            self._fill(6, between_pdus=True)
        start = self._start
        pdu_type, _, length = _HEADER.unpack_from(self._buffer, start)
        if pdu_type == _P_DATA_TF:
            if length > self.pdu_limit:
                self._refuse_pdu(
                    guard.INVALID_PARAMETER_VALUE, f"P-DATA-TF declares {length} bytes, limit {self.pdu_limit}"
                )
            end = start + 6 + length
            if self._end < end:
                self._fill(6 + length)
                start = self._start
                end = start + 6 + length
            self._start = end
            self._receive_p_data(self._view[start + 6 : end], length)
            return
        name = guard._PDU_NAMES.get(pdu_type)
        if name is None:
            self._refuse_pdu(guard.UNRECOGNIZED_PDU, f"unknown PDU type 0x{pdu_type:02X} declaring {length} bytes")
        limit = guard.ASSOCIATION_PDU_LIMIT if pdu_type in (0x01, 0x02) else guard.FIXED_PDU_LENGTH
        if length > limit:
            self._refuse_pdu(guard.INVALID_PARAMETER_VALUE, f"{name} declares {length} bytes, limit {limit}")
        if pdu_type not in (_A_RELEASE_RQ, _A_ABORT):
            self._refuse_pdu(guard.UNEXPECTED_PDU, f"{name} not expected in Sta6")
        self._fill(6 + length)
        self._start += 6 + length
        if length != guard.FIXED_PDU_LENGTH:
            # pynetdicom cannot decode a shorter one either (section 2.3 of the conformance statement).
            self._refuse_pdu(guard.INVALID_PARAMETER_VALUE, f"{name} cannot be decoded: {length} bytes, 4 expected")
        if pdu_type == _A_ABORT:
            # AA-3: the peer ended it, whatever source and reason it gave.
            self._close()
            self._outcome = "aborted"
            raise _Ended
        # AR-2, AR-4: a release request is answered at once; a message still incomplete is dropped with it.
        self._discard_store()
        self._send(_A_RELEASE_RP_PDU)
        self._close()
        self._outcome = "released"
        raise _Ended

    def _set_timeouts(self) -> None:
        """The network timeout, as the socket's own.

        A plain TCP socket stays in blocking mode with the kernel's receive and send timeouts: each read is one
        system call that returns once the PDU (or its header) is complete (MSG_WAITALL), or the timeout passed.
        A TLS socket cannot wait for all (its records are decrypted in user space): Python's timeout, a poll before
        each read.
        """
        timeout = self.settings.network_timeout
        connection = self.connection
        if isinstance(connection, ssl.SSLSocket) or not hasattr(socket, "MSG_WAITALL"):
            connection.settimeout(timeout)
            self._wait_all = 0
            return
        connection.settimeout(None)
        if timeout:
            seconds = int(timeout)
            interval = struct.pack("@ll", seconds, int((timeout - seconds) * 1_000_000))
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, interval)
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, interval)
        self._wait_all = socket.MSG_WAITALL

    def _fill(self, count: int, between_pdus: bool = False) -> None:
        """Receive until ``count`` bytes are in the buffer from ``self._start`` on.

        What is missing of a large PDU is received exactly, in one system call where the socket waits for all;
        anything shorter asks for up to READ_AHEAD bytes more, so that a run of small PDUs (or a PDU and the
        next one's header) costs one call, not two per PDU. What the peer sends past the current PDU is never
        waited for: a read returns once ``count`` is reached, whatever else was asked.
        """
        available = self._end - self._start
        if self._start + count > len(self._buffer):
            self._make_room(count)
        view = self._view
        recv_into = self.connection.recv_into
        while available < count:
            missing = count - available
            end = self._end
            try:
                if missing >= _EXACT_READ and self._wait_all:
                    received = recv_into(view[end : end + missing], missing, self._wait_all)
                else:
                    wanted = min(len(self._buffer) - end, max(missing, READ_AHEAD))
                    received = recv_into(view[end : end + wanted], wanted)
            except (TimeoutError, BlockingIOError):
                # Python's timeout, or the kernel's (SO_RCVTIMEO: EAGAIN with nothing received).
                self._timed_out(between_pdus and available == 0)
            except OSError:
                received = 0
            if not received:
                if self._stop_requested:
                    self._abort_unlogged()
                # AA-4: the peer closed the connection (or it broke).
                self._close()
                self._outcome = "aborted"
                raise _Ended
            self._end = end + received
            available += received

    def _make_room(self, count: int) -> None:
        """Move the unparsed bytes to the buffer's start, in a larger buffer when ``count`` bytes would not fit."""
        available = self._end - self._start
        size = len(self._buffer)
        if count > size - min(READ_AHEAD, size // 2):
            # A PDU larger than any so far (checked against the limit already): room for it and the read-ahead.
            size = min(max(count + READ_AHEAD, 2 * size), self._capacity_limit)
            grown = bytearray(size)
            grown[:available] = self._view[self._start : self._end]
            self._buffer, self._view = grown, memoryview(grown)
        else:
            self._view[:available] = self._view[self._start : self._end]
        self._start, self._end = 0, available

    # -- P-DATA ------------------------------------------------------------------------------------------------------

    def _receive_p_data(self, view: memoryview, length: int) -> None:
        offset = 0
        while offset < length:
            if offset + 4 > length:
                self._refuse_pdu(guard.INVALID_PARAMETER_VALUE, "P-DATA-TF cannot be decoded: PDV item header cut off")
            (item_length,) = struct.unpack_from(">L", view, offset)
            end = offset + 4 + item_length
            if end > length:
                self._refuse_pdu(
                    guard.INVALID_PARAMETER_VALUE, "P-DATA-TF cannot be decoded: PDV item runs past the PDU"
                )
            if item_length < 2:
                self._violation("PDV without a message control header")
            context_id = view[offset + 4]
            control = view[offset + 5]
            if context_id not in self.contexts:
                self._violation(f"PDV on presentation context {context_id}, which was not accepted")
            fragment = view[offset + 6 : end]
            if control & guard._COMMAND:
                self._receive_command_fragment(context_id, fragment, control)
            else:
                self._receive_data_fragment(context_id, fragment, control)
            offset = end

    def _receive_command_fragment(self, context_id: int, fragment: memoryview, control: int) -> None:
        if self._store is not None:
            self._violation("command fragment while the previous message's data set is incomplete")
        commands = self._commands
        if commands.context_id not in (None, context_id):
            self._violation("command fragments on two presentation contexts")
        if len(commands.data) + len(fragment) > guard.COMMAND_SET_LIMIT:
            self._violation(f"command set longer than {guard.COMMAND_SET_LIMIT} bytes")
        commands.data += fragment
        commands.context_id = context_id
        if control & guard._LAST:
            command = bytes(commands.data)
            self._commands = _Commands()
            self._receive_command(context_id, command)

    def _receive_command(self, context_id: int, command: bytes) -> None:
        try:
            elements = guard._command_elements(command)
        except guard.DimseViolation as violation:
            self._violation(str(violation))
        field_ = guard._unsigned_short(elements, guard._COMMAND_FIELD)
        if field_ not in (guard._C_STORE_RQ, guard._C_ECHO_RQ, guard._C_CANCEL_RQ):
            shown = "none" if field_ is None else f"0x{field_:04X}"
            self._violation(f"command field {shown} is not a request this SCP serves")
        name = guard._SERVED_COMMANDS[field_]
        missing = [f"(0000,{tag:04X})" for tag in guard._REQUIRED[field_] if not elements.get(tag)]
        if missing:
            self._violation(f"{name} without {', '.join(missing)}: it cannot be answered")
        data_set_type = guard._unsigned_short(elements, guard._COMMAND_DATA_SET_TYPE)
        if data_set_type is None:
            self._violation(f"{name} without Command Data Set Type (0000,0800)")
        has_data_set = data_set_type != guard._NO_DATA_SET
        abstract_syntax, transfer_syntax = self.contexts[context_id]
        if field_ == guard._C_CANCEL_RQ:
            if has_data_set:
                self._violation(f"{name} declares a data set: it takes none")
            # Requests are answered before the next is read: whatever it cancels has had its answer already.
            return
        message_id = guard._unsigned_short(elements, guard._MESSAGE_ID)
        if message_id is None:
            self._violation(f"{name} has a Message ID (0000,0110) that is not 2 bytes long")
        if field_ == guard._C_ECHO_RQ:
            if has_data_set:
                self._violation(f"{name} declares a data set: it takes none")
            sop_class = guard._text(elements, guard._AFFECTED_SOP_CLASS_UID) or ""
            if sop_class != abstract_syntax:
                self._violation(f"{name} for {sop_class} on a presentation context for {abstract_syntax}")
            self._respond(context_id, _C_ECHO_RSP, message_id, statuses.SUCCESS, sop_class)
            return
        if not has_data_set:
            self._violation("C-STORE-RQ without a data set")
        awaited = guard._check_store_request(context_id, elements, abstract_syntax)
        store = _Store(
            context_id,
            message_id,
            awaited.sop_class_uid,
            awaited.sop_instance_uid,
            transfer_syntax,
            refusal=awaited.refusal,
            detail=awaited.detail,
        )
        if store.refusal is None:
            self._open_spool(store)
        self._store = store

    def _receive_data_fragment(self, context_id: int, fragment: memoryview, control: int) -> None:
        store = self._store
        if store is None:
            self._violation("data set fragment without a C-STORE request before it")
        if context_id != store.context_id:
            self._violation("data set fragment on another presentation context than its command")
        size = len(fragment)
        if store.refusal is None and store.received_bytes + size > self.settings.instance_limit:
            self._refuse_oversized(store)
        if store.refusal is None:
            store.digest.update(fragment)
            written = os.write(store.fd, fragment)
            while written < size:
                written += os.write(store.fd, fragment[written:])
            store.received_bytes += size
            wanted = HEAD_BYTES - len(store.head)
            if wanted > 0:
                store.head += fragment[:wanted]
        else:
            store.dropped_bytes += size
        if control & guard._LAST:
            self._store = None
            self._complete(store)

    # -- C-STORE -------------------------------------------------------------------------------------------------------

    def _open_spool(self, store: _Store) -> None:
        store.fd, store.path = _spool_file()
        meta = file_meta(store.sop_class_uid, store.sop_instance_uid, store.transfer_syntax)
        store.digest = Crc64Nvme(meta)
        os.write(store.fd, meta)
        store.head += meta
        store.meta_length = len(meta)

    def _refuse_oversized(self, store: _Store) -> None:
        """Stop spooling a data set larger than AHI imports: what arrived is deleted, the rest is read and dropped."""
        self._discard_spool(store)
        store.refusal = statuses.INSTANCE_TOO_LARGE
        store.dropped_bytes = store.received_bytes
        store.detail = f"data set longer than {self.settings.instance_limit} bytes (MAXIMUM_INSTANCE_BYTES)"

    def _complete(self, store: _Store) -> None:
        if store.refusal is not None:
            self._answer_refusal(store)
            return
        assert store.path is not None
        os.close(store.fd)
        store.fd = -1
        event = _StoreEvent(
            self.assoc,
            _Request(store.sop_class_uid, store.sop_instance_uid, store.message_id),
            _Context(store.transfer_syntax),
            str(store.path),
            store.digest.value(),
            store.head,  # walked in place: the store is done with it
            store.meta_length + store.received_bytes,
        )
        try:
            status = handlers.handle_store(event, self.settings.sessions, self.settings.recorder)
        except Exception:
            # As pynetdicom answers a handler's exception.
            LOG.exception(
                "C-STORE handler failed",
                extra={"fields": {"event": "c-store-handler-failed", **guard._peer_fields(self.assoc)}},
            )
            status = 0xC211
        finally:
            # Stored instances were moved away (local) or uploaded (S3); anything left is not needed.
            with contextlib.suppress(OSError):
                store.path.unlink()
            store.path = None
        self._respond(
            store.context_id, _C_STORE_RSP, store.message_id, status, store.sop_class_uid, store.sop_instance_uid
        )

    def _answer_refusal(self, store: _Store) -> None:
        assert store.refusal is not None
        guard.refused_store(
            self.assoc, self.settings.recorder, store.refusal, store.detail, store.sop_class_uid,
            store.sop_instance_uid, store.dropped_bytes,
        )  # fmt: skip
        self._respond(
            store.context_id,
            _C_STORE_RSP,
            store.message_id,
            store.refusal,
            store.sop_class_uid if guard._is_uid(store.sop_class_uid) else "",
            store.sop_instance_uid if guard._is_uid(store.sop_instance_uid) else "",
        )

    def _discard_spool(self, store: _Store) -> None:
        if store.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(store.fd)
            store.fd = -1
        if store.path is not None:
            with contextlib.suppress(OSError):
                store.path.unlink()
            store.path = None

    def _discard_store(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            self._discard_spool(store)

    # -- sending -----------------------------------------------------------------------------------------------------

    def _respond(
        self, context_id: int, command_field: int, message_id: int, status: int, sop_class: str, sop_instance: str = ""
    ) -> None:
        command = response_command(command_field, message_id, status, sop_class, sop_instance)
        self._send(p_data(context_id, command, self.send_limit))

    def _send(self, data: bytes) -> None:
        try:
            self.connection.sendall(data)
        except OSError as error:
            # AA-4 as the peer sees it: nothing more can be sent or answered.
            LOG.info(
                "connection lost",
                extra={"fields": {"event": "connection-lost", **guard._peer_fields(self.assoc), "error": str(error)}},
            )
            self._close()
            self._outcome = "aborted"
            raise _Ended from error

    # -- ending ------------------------------------------------------------------------------------------------------

    def _violation(self, detail: str) -> NoReturn:
        """A DIMSE message that cannot be served: a service-user abort, as guard.py sends."""
        self._abort(guard.SERVICE_USER, guard.REASON_NOT_SPECIFIED, detail)
        raise _Ended

    def _refuse_pdu(self, reason: int, detail: str) -> NoReturn:
        self._abort(guard.SERVICE_PROVIDER, reason, detail)
        raise _Ended

    def _abort(self, source: int, reason: int, detail: str) -> None:
        self.settings.recorder.protocol_abort()
        LOG.warning(
            "association aborted",
            extra={
                "fields": {
                    "event": "protocol-abort",
                    **guard._peer_fields(self.assoc),
                    "reason": guard._ABORT_REASONS[(source, reason)],
                    "abortSource": source,
                    "abortReason": reason,
                    "detail": detail,
                }
            },
        )
        self._discard_store()
        with contextlib.suppress(OSError):
            self.connection.sendall(abort_pdu(source, reason))
        self._close()
        self._outcome = "aborted"

    def _abort_unlogged(self) -> NoReturn:
        # Asked to by this process (a shutdown past its grace period): pynetdicom's abort, a service-user A-ABORT.
        self._discard_store()
        with contextlib.suppress(OSError):
            self.connection.sendall(abort_pdu(guard.SERVICE_USER, guard.REASON_NOT_SPECIFIED))
        self._close()
        self._outcome = "aborted"
        raise _Ended

    def _timed_out(self, idle: bool) -> NoReturn:
        LOG.warning(
            "network timeout",
            extra={
                "fields": {
                    "event": "network-timeout",
                    **guard._peer_fields(self.assoc),
                    "seconds": self.settings.network_timeout,
                    "where": "between PDUs" if idle else "inside a PDU",
                }
            },
        )
        self._abort_unlogged()

    def _close(self) -> None:
        guard._drain_and_close(self.connection)
        transport = self.assoc.dul.socket
        if transport is not None:
            with contextlib.suppress(Exception):
                transport.close()
        # pynetdicom's close skips closing when its own shutdown fails (as it does on a socket already shut down).
        with contextlib.suppress(OSError):
            self.connection.close()

    def _finish(self) -> None:
        assoc = self.assoc
        assoc.is_established = False
        if self._outcome == "released":
            assoc.is_released = True
            event = evt.EVT_RELEASED
        else:
            assoc.is_aborted = True
            event = evt.EVT_ABORTED
        self._finished.set()
        evt.trigger(assoc, event, {})

    def stop(self, wait: float = 5.0) -> None:
        """Abort from another thread (shutdown): wake the loop, which sends the A-ABORT itself, and wait for it."""
        self._stop_requested = True
        with contextlib.suppress(OSError):
            # The plain socket's shutdown, not TLS's (that would drop its state under the reading thread).
            socket.socket.shutdown(self.connection, socket.SHUT_RD)
        self._finished.wait(wait)


# Spool file names: unique to this process (its id and a random token, made again in a forked worker) and to the
# instance (a counter).
_spool_names = itertools.count()


def _new_spool_token() -> str:
    return f"{os.getpid()}-{secrets.token_hex(4)}"


_spool_token = _new_spool_token()


def _renew_spool_token() -> None:
    global _spool_token
    _spool_token = _new_spool_token()


os.register_at_fork(after_in_child=_renew_spool_token)


def _spool_file() -> tuple[int, Path]:
    """A new, exclusively created spool file in the spool folder (tempfile's, which storage.use_spool_dir sets).

    tempfile.mkstemp draws eight random characters per name, a fifth of the spool's cost per instance; a counter
    under a per-process token is as unique (O_EXCL still refuses a name that exists, and the next is tried).
    """
    folder = tempfile.gettempdir()
    while True:
        path = os.path.join(folder, f"spool-{_spool_token}-{next(_spool_names)}.dcm")
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), Path(path)
        except FileExistsError:
            continue


# -- encoding ----------------------------------------------------------------------------------------------------------


def _uid_value(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw


def _explicit(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def file_meta(sop_class: str, sop_instance: str, transfer_syntax: str) -> bytes:
    """Preamble, prefix and File Meta Information (PS3.10 7.1), as pynetdicom wrote it ahead of a spooled data set."""
    version = _IMPLEMENTATION_VERSION.encode("ascii")
    body = (
        struct.pack("<HH2sHL", 0x0002, 0x0001, b"OB", 0, 2)
        + b"\x00\x01"
        + _explicit(0x0002, 0x0002, b"UI", _uid_value(sop_class))
        + _explicit(0x0002, 0x0003, b"UI", _uid_value(sop_instance))
        + _explicit(0x0002, 0x0010, b"UI", _uid_value(transfer_syntax))
        + _explicit(0x0002, 0x0012, b"UI", _uid_value(_IMPLEMENTATION_UID))
        + _explicit(0x0002, 0x0013, b"SH", version + b" " if len(version) % 2 else version)
    )
    return bytes(128) + b"DICM" + _explicit(0x0002, 0x0000, b"UL", struct.pack("<L", len(body))) + body


def _implicit(element: int, value: bytes) -> bytes:
    return _ELEMENT.pack(0x0000, element, len(value)) + value


def response_command(command_field: int, message_id: int, status: int, sop_class: str, sop_instance: str = "") -> bytes:
    """A C-STORE-RSP or C-ECHO-RSP command set (PS3.7 9.3.1.2, 9.3.5.2), implicit VR little endian."""
    body = b""
    if sop_class:
        body += _implicit(0x0002, _uid_value(sop_class))
    body += _implicit(0x0100, _US.pack(command_field))
    body += _implicit(0x0120, _US.pack(message_id))
    body += _implicit(0x0800, _US.pack(guard._NO_DATA_SET))
    body += _implicit(0x0900, _US.pack(status))
    if sop_instance:
        body += _implicit(0x1000, _uid_value(sop_instance))
    return _implicit(0x0000, struct.pack("<L", len(body))) + body


def p_data(context_id: int, command: bytes, limit: int) -> bytes:
    """P-DATA-TF PDUs carrying one command set, split so that none exceeds the peer's Maximum Length Received."""
    step = (limit - 6) if limit else len(command)
    pieces = [command[start : start + step] for start in range(0, len(command), max(step, 1))] or [b""]
    out = b""
    for index, piece in enumerate(pieces):
        control = guard._COMMAND | (guard._LAST if index == len(pieces) - 1 else 0)
        item = _PDV_HEADER.pack(len(piece) + 2, context_id, control) + piece
        out += _HEADER.pack(_P_DATA_TF, 0, len(item)) + item
    return out


def abort_pdu(source: int, reason: int) -> bytes:
    return _HEADER.pack(_A_ABORT, 0, 4) + bytes([0, 0, source, reason])


# -- wiring ------------------------------------------------------------------------------------------------------------


def handle_connection_open(event: Any, settings: Settings) -> None:
    """EVT_CONN_OPEN (after guard.handle_connection_open): this association's data phase may be owned here."""
    event.assoc.dul.owned = settings


def run(assoc: Any, settings: Settings, connection: socket.socket, pending: bytes) -> None:
    phase = DataPhase(assoc, settings, connection, pending)
    assoc.data_phase = phase
    started = time.monotonic()
    phase.run()
    LOG.debug("data phase ended", extra={"fields": {"seconds": round(time.monotonic() - started, 3)}})
