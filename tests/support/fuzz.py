"""Seeded hostile-input cases (issue 9), for tests/fuzz and bench/soak.py.

Every case is a byte string a raw peer (support/wire.py) sends, possibly after a proper association, and what the
SCP must do about it. ``cases(seed, count, level, kind)`` is deterministic: case ``n`` of a seed is made from
``random.Random(f"{seed}:{level}:{n}")`` alone, so any one case can be re-run on its own. ``kind`` (support/wire.py)
says which association the cases negotiate or imitate: storage and verification only, or Storage Commitment as
well (the same cases and draws, the request proposing one more presentation context).

Two levels:

- ``pdu``: garbage, truncated PDU streams, every PDU type (1-7 and unknown ones) before and after the association,
  huge and inconsistent lengths, mutated A-ASSOCIATE-RQ items, P-DATA misuse, release and abort out of order;
- ``dataset``: C-STORE requests on an accepted presentation context whose data set (or Affected SOP Instance UID)
  is damaged: bit flips, truncation, element lengths past the end, undefined lengths, unclosed and deeply nested
  sequences, unknown VRs, hostile UIDs (empty, ``\\``, too long, non-ASCII, path traversal);
- ``commitment`` (commitment associations only): Storage Commitment N-ACTION requests whose Action Information
  or command is damaged: bit flips, truncation, random bytes, hostile Transaction and referenced UIDs, too many
  references, deep nesting, other action types and SOP classes, N-ACTION on the wrong context, unsolicited
  N-EVENT-REPORT-RSP. A request the SCP accepts (0x0000) is followed by its N-EVENT-REPORT on the association,
  which ``run_case`` answers before it releases.

``run_case`` sends one case and returns the SCP's answer; it raises ``Silence`` when the SCP neither answers nor
closes the connection within ``ANSWER_SECONDS``: far below the SCP's timers, so an answer that only a timer would
give counts as silence.
"""

from __future__ import annotations

import random
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from . import wire
from .wire import RawPeer

# The SCPs under fuzz run with ACSE/DIMSE/network timeouts of 60 s or more.
ANSWER_SECONDS = 5.0
# How long the N-EVENT-REPORT of an accepted storage commitment request may take: it is not an answer to a request
# (PS3.4 J.3.3 lets it come later), and in local mode its evaluation walks the store once per reference.
REPORT_SECONDS = 30.0

# How the SCP must react to a case's bytes.
ANSWER = "answer"  # complete PDUs: an answer (any PDU) or a close, without the peer closing first
STORE_STATUS = "store-status"  # a request (C-STORE, N-ACTION) with its whole data set: a status or an A-ABORT
EOF = "eof"  # the SCP may rightly wait for more: the peer then closes its side, and the SCP must close too

# A-ASSOCIATE-RQ offering C-ECHO on 1, CT Image Storage in explicit VR little endian on 3 and implicit on 5.
CT_IMPLICIT_CONTEXT = 5
ASSOCIATION_CONTEXTS = [
    wire.presentation_context(wire.ECHO_CONTEXT, wire.VERIFICATION, wire.IMPLICIT_LE),
    wire.presentation_context(wire.STORE_CONTEXT, wire.CT_IMAGE_STORAGE, wire.EXPLICIT_LE),
    wire.presentation_context(CT_IMPLICIT_CONTEXT, wire.CT_IMAGE_STORAGE, wire.IMPLICIT_LE),
]
ASSOCIATE = wire.associate_rq(ASSOCIATION_CONTEXTS)

# The same request proposing Storage Commitment Push Model on context 7 as well: an association the SCP serves as
# "commitment" (support/wire.py). The cases of a seed are the same on both kinds but for this request.
ASSOCIATIONS = {wire.STORAGE: ASSOCIATE, wire.COMMITMENT: wire.with_commitment(ASSOCIATE)}


class Draw(random.Random):
    """A case's random draws, and the association request (of the run's kind) its bytes are built around."""

    def __init__(self, seed: str, kind: str = wire.STORAGE) -> None:
        super().__init__(seed)
        self.kind = kind
        self.associate = ASSOCIATIONS[kind]


def _associate(rng: random.Random) -> bytes:
    return rng.associate if isinstance(rng, Draw) else ASSOCIATE


# Not a registered root: instances stored by the fuzzer are recognisable as such.
UID_ROOT = "1.2.826.0.1.3680043.8.498.99"

HOSTILE_UIDS = [
    "",
    "\\",
    "1.2.3\\1.2.4",
    "1." + "2" * 70,
    "1.2." + "3." * 40 + "4",
    "1.2.3.\u00fc",
    "../../../../tmp/escaped",
    "..",
    ".",
    "1.2.3/../../escaped",
    "/tmp/escaped",
    "1.2.3\x00/../x",
    " 1.2.3 ",
    "1..2",
    "1.2.",
    "CON",
    "1.2.3\r\n4",
    "%2e%2e%2f",
    "1.2.3*",
    "~root",
]


@dataclass
class Case:
    level: str
    number: int
    family: str
    payload: bytes
    expect: str
    # Sent (and accepted) before the payload when set.
    associate: bytes | None = None
    # The payload goes out in this many pieces, 1 ms apart (PDUs arriving over several reads).
    pieces: int = 1
    # When given, the only answers that pass (see Outcome.answer): a prefix match.
    allowed: tuple[str, ...] | None = None
    # When given, the C-STORE status the case must get.
    status: int | None = None
    # Where the case came from, to reproduce it.
    seed: int = 0
    kind: str = wire.STORAGE

    @property
    def label(self) -> str:
        return f"{self.level}#{self.number} {self.family} ({self.kind} association, FUZZ_SEED={self.seed})"


@dataclass
class Outcome:
    case: Case
    answer: str  # "A-ABORT 2/6", "A-ASSOCIATE-RJ 1/1/1", "A-ASSOCIATE-AC", "P-DATA", "A-RELEASE-RP", "closed"
    seconds: float
    statuses: list[int] = field(default_factory=list)


class Silence(AssertionError):
    """The SCP neither answered nor closed the connection in time."""


class Refused(AssertionError):
    """The association a case needs before its payload was not accepted."""


# -- running a case -------------------------------------------------------------------------------------------------


def _describe(received: wire.Received | None) -> str:
    if received is None:
        return "closed"
    if received.pdu_type == wire.ABORT and len(received.body) >= 4:
        return "A-ABORT {}/{}".format(*received.abort_source_reason)
    if received.pdu_type == wire.ASSOCIATE_RJ and len(received.body) >= 4:
        return "A-ASSOCIATE-RJ {}/{}/{}".format(*received.reject_result_source_reason)
    names = {wire.ASSOCIATE_AC: "A-ASSOCIATE-AC", wire.P_DATA: "P-DATA", wire.RELEASE_RP: "A-RELEASE-RP"}
    return names.get(received.pdu_type, f"PDU 0x{received.pdu_type:02X}")


def _await(peer: RawPeer, case: Case, started: float, what: str) -> wire.Received | None:
    try:
        return peer.receive(ANSWER_SECONDS)
    except TimeoutError:
        raise Silence(f"{case.label}: no answer {what} within {ANSWER_SECONDS} s") from None


def _await_close(peer: RawPeer, case: Case, after: str) -> None:
    if not peer.closed_by_scp(ANSWER_SECONDS):
        raise Silence(f"{case.label}: connection still open {ANSWER_SECONDS} s after {after}")


def run_case(port: int, case: Case) -> Outcome:
    started = time.monotonic()
    with RawPeer(port) as peer:
        if case.associate is not None:
            accepted = peer.associate(case.associate)
            if accepted is None or accepted.pdu_type != wire.ASSOCIATE_AC:
                raise Refused(f"{case.label}: association answered with {_describe(accepted)}")
        _send(peer, case)
        if case.expect == EOF:
            peer.half_close()
        first = _await(peer, case, started, "to the payload")
        outcome = Outcome(
            case, _describe(first), 0.0, first.statuses() if first and first.pdu_type == wire.P_DATA else []
        )
        if case.allowed is not None and not outcome.answer.startswith(case.allowed):
            raise AssertionError(f"{case.label}: answered {outcome.answer}, expected one of {case.allowed}")
        if case.expect == STORE_STATUS and not (outcome.statuses or outcome.answer.startswith("A-ABORT")):
            raise AssertionError(f"{case.label}: a C-STORE answered with {outcome.answer}, not a status or A-ABORT")
        if case.status is not None and outcome.statuses != [case.status]:
            raise AssertionError(f"{case.label}: statuses {outcome.statuses}, expected [0x{case.status:04X}]")
        if case.level == "commitment" and outcome.statuses == [0] and case.expect != EOF:
            # An accepted storage commitment request: its report comes on this association, and is answered.
            try:
                report = peer.receive(REPORT_SECONDS)
            except TimeoutError:
                raise Silence(f"{case.label}: no N-EVENT-REPORT within {REPORT_SECONDS} s of the request") from None
            if report is None or not _answer_report(peer, report):
                raise AssertionError(f"{case.label}: after N-ACTION success, {_describe(report)}, not a report")
        if first is None or first.pdu_type == wire.RELEASE_RP:
            pass  # closed, or released: the requestor closes
        elif first.pdu_type in (wire.ASSOCIATE_AC, wire.P_DATA) and case.expect != EOF:
            # The association goes on: it must be released (or aborted) on request as well.
            peer.send(wire.release_rq())
            second = _await(peer, case, started, "to an A-RELEASE-RQ")
            if second is not None and second.pdu_type == wire.P_DATA:
                second = _await(peer, case, started, "to an A-RELEASE-RQ after a late P-DATA")
            if second is not None and second.pdu_type == wire.P_DATA:  # a report's data set after its command
                second = _await(peer, case, started, "to an A-RELEASE-RQ after a late data set")
            if second is None or second.pdu_type != wire.RELEASE_RP:
                _await_close(peer, case, f"{_describe(second)}")
        else:
            _await_close(peer, case, outcome.answer)
        outcome.seconds = time.monotonic() - started
        return outcome


_N_EVENT_REPORT_RQ = 0x0100
_N_EVENT_REPORT_RSP = 0x8100


def _answer_report(peer: RawPeer, received: wire.Received) -> bool:
    """Answer an N-EVENT-REPORT-RQ (a storage commitment report) in ``received`` with success; False when it holds
    none. The report's data set may follow in further P-DATA-TF PDUs: they are read before returning."""
    offset = 0
    while offset + 6 <= len(received.body):
        size, context_id, control = struct.unpack_from(">LBB", received.body, offset)
        command = received.body[offset + 6 : offset + 4 + size]
        offset += 4 + size
        values = wire.command_values(command) if control & wire.COMMAND else {}
        if values.get(0x0100) != struct.pack("<H", _N_EVENT_REPORT_RQ):
            continue
        data_set_follows = values.get(0x0800) != struct.pack("<H", wire.NO_DATA_SET)
        while data_set_follows and offset >= len(received.body):
            more = peer.receive(ANSWER_SECONDS)
            if more is None or more.pdu_type != wire.P_DATA:
                return False
            last = more.body[5] & wire.LAST if len(more.body) >= 6 else 0
            if last:
                break
        answer = wire.command_set(
            {
                0x0002: wire.STORAGE_COMMITMENT,
                0x0100: _N_EVENT_REPORT_RSP,
                0x0120: struct.unpack("<H", values.get(0x0110, b"\0\0"))[0],
                0x0800: wire.NO_DATA_SET,
                0x0900: 0,
                0x1000: wire.STORAGE_COMMITMENT_INSTANCE,
                0x1002: struct.unpack("<H", values.get(0x1002, b"\0\0"))[0],
            }
        )
        peer.send(wire.p_data(wire.pdv(context_id, wire.COMMAND | wire.LAST, answer)))
        return True
    return False


def _send(peer: RawPeer, case: Case) -> None:
    payload = case.payload
    if case.pieces <= 1 or len(payload) < 2:
        peer.send(payload)
        return
    cuts = sorted(random.Random(case.number).sample(range(1, len(payload)), min(case.pieces - 1, len(payload) - 1)))
    for start, end in zip([0, *cuts], [*cuts, len(payload)], strict=True):
        if not peer.send(payload[start:end]):
            return
        time.sleep(0.001)


# -- the cases ------------------------------------------------------------------------------------------------------


def cases(seed: int, count: int, level: str, kind: str = wire.STORAGE) -> Iterator[Case]:
    """``count`` cases of one level; the first are fixed (the issue's reproductions), the rest drawn at random."""
    if level == "commitment":
        kind = wire.COMMITMENT  # N-ACTION needs an association that negotiated Storage Commitment
    fixed = list(_fixed_cases(level, ASSOCIATIONS[kind]))
    generators = {"pdu": _PDU_GENERATORS, "dataset": _DATASET_GENERATORS, "commitment": _COMMITMENT_GENERATORS}[level]
    for number in range(count):
        rng = Draw(f"{seed}:{level}:{number}", kind)
        if number < len(fixed):
            family, payload, expect, associate, allowed, status = fixed[number]
            case = Case(level, number, family, payload, expect, associate, allowed=allowed, status=status)
        else:
            generator = rng.choice(generators)
            case = generator(rng)
            case.level, case.number = level, number
            if rng.random() < 0.05:
                case.pieces = rng.randint(2, 8)
        case.seed = seed
        case.kind = kind
        yield case


_ABORT = ("A-ABORT",)
_SERVICE_PROVIDER_INVALID = ("A-ABORT 2/6",)


_Fixed = tuple[str, bytes, str, bytes | None, tuple[str, ...] | None, int | None]


def _fixed_cases(level: str, associate: bytes) -> Iterator[_Fixed]:
    """The four defects of issue 9 (tests/container/test_hostile_input.py holds their full regression tests)."""
    if level == "pdu":
        header_4gib = struct.pack(">BBL", wire.P_DATA, 0, 0xFFFFFFFF) + bytes(10)
        yield "issue9-1/4-gib-header", header_4gib, ANSWER, None, _SERVICE_PROVIDER_INVALID, None
        yield "issue9-1/4-gib-header-associated", header_4gib, ANSWER, associate, _SERVICE_PROVIDER_INVALID, None
        never_last = wire.p_data(wire.pdv(wire.STORE_CONTEXT, 0, bytes(16000)))
        yield "issue9-2/data-never-last", never_last * 8, ANSWER, associate, ("A-ABORT 0/0",), None
        commands = wire.p_data(wire.pdv(wire.STORE_CONTEXT, wire.COMMAND, bytes(16000)))
        yield "issue9-2/command-never-last", commands * 8, ANSWER, associate, ("A-ABORT 0/0",), None
        for context_id in (0, 2):
            request = wire.associate_rq([wire.presentation_context(context_id, wire.VERIFICATION, wire.IMPLICIT_LE)])
            yield f"issue9-3/context-id-{context_id}", request, ANSWER, None, _SERVICE_PROVIDER_INVALID, None
        for identity in (0, 255):
            request = wire.associate_rq(user_info=wire.user_information(wire.user_identity(identity)))
            yield f"issue9-3/user-identity-{identity}", request, ANSWER, None, _SERVICE_PROVIDER_INVALID, None
    elif level == "dataset":
        data_set = DataSet(random.Random(0)).encode()
        payload = _store_pdus(wire.STORE_CONTEXT, wire.store_command("\\"), data_set)
        yield "issue9-4/backslash-instance-uid", payload, STORE_STATUS, associate, None, 0xC010
        payload = _store_pdus(wire.STORE_CONTEXT, wire.store_command(None), data_set)
        yield "issue9-3/no-instance-uid", payload, STORE_STATUS, associate, None, 0xC010


# -- PDU level ------------------------------------------------------------------------------------------------------


def _random_bytes(rng: random.Random, low: int, high: int) -> bytes:
    return rng.randbytes(rng.randint(low, high))


def _garbage(rng: random.Random) -> Case:
    data = bytearray(_random_bytes(rng, 1, 3000))
    if rng.random() < 0.5:
        data[0] = rng.randint(1, 7)  # a known type, so the header's length is believed (within its limit)
    return Case("", 0, "garbage", bytes(data), EOF, _associate(rng) if rng.random() < 0.5 else None)


def _valid_stream(rng: random.Random) -> bytes:
    echo = wire.p_data(wire.pdv(wire.ECHO_CONTEXT, wire.COMMAND | wire.LAST, wire.echo_command()))
    store = _store_pdus(wire.STORE_CONTEXT, wire.store_command(_uid(rng, 1)), DataSet(rng).encode())
    return _associate(rng) + rng.choice([echo, store, echo + store]) + wire.release_rq()


def _truncated(rng: random.Random) -> Case:
    stream = _valid_stream(rng)
    return Case("", 0, "truncated", stream[: rng.randint(1, len(stream) - 1)], EOF)


def _mutated_stream(rng: random.Random) -> Case:
    stream = bytearray(_valid_stream(rng))
    for _ in range(rng.randint(1, 6)):
        stream[rng.randrange(len(stream))] ^= 1 << rng.randrange(8)
    return Case("", 0, "stream-bit-flips", bytes(stream), EOF)


_PDU_BODIES: dict[int, Callable[[random.Random], bytes]] = {
    wire.ASSOCIATE_RQ: lambda rng: _associate(rng)[6:],
    wire.ASSOCIATE_AC: lambda rng: _associate(rng)[6:],
    wire.ASSOCIATE_RJ: lambda rng: bytes([0, rng.randint(0, 3), rng.randint(0, 3), rng.randint(0, 8)]),
    wire.P_DATA: lambda rng: wire.pdv(wire.ECHO_CONTEXT, wire.COMMAND | wire.LAST, wire.echo_command()),
    wire.RELEASE_RQ: lambda rng: bytes(4),
    wire.RELEASE_RP: lambda rng: bytes(4),
    wire.ABORT: lambda rng: bytes([0, 0, rng.choice([0, 1, 2, 255]), rng.randint(0, 7)]),
}


def _every_pdu_type(rng: random.Random) -> Case:
    """Each type 1-7 (and unknown ones) with a plausible or a random body, before or after the association."""
    pdu_type = rng.choice([*range(1, 8), *range(1, 8), 0, 8, 9, 0x10, 0x40, 0x7F, 0x80, 0xFE, 0xFF])
    associated = rng.random() < 0.5
    known = pdu_type in _PDU_BODIES
    body = _PDU_BODIES[pdu_type](rng) if known and rng.random() < 0.7 else _random_bytes(rng, 0, 64)
    payload = wire.pdu(pdu_type, body)
    family = f"pdu-type-{pdu_type}-{'associated' if associated else 'first'}"
    if not known:
        return Case("", 0, family, payload, ANSWER, _associate(rng) if associated else None, allowed=("A-ABORT 2/1",))
    # A P-DATA body may hold fragments that rightly wait for more.
    expect = EOF if pdu_type == wire.P_DATA else ANSWER
    return Case("", 0, family, payload, expect, _associate(rng) if associated else None)


def _huge_length(rng: random.Random) -> Case:
    """A header declaring more than its type's limit: A-ABORT 2/6 before a byte of the body is read."""
    pdu_type = rng.randint(1, 7)
    limits = {1: 256 * 1024, 2: 256 * 1024, 4: 1024 * 1024 + 6}
    floor = limits.get(pdu_type, 4) + 1
    length = rng.choice(
        [floor, floor + rng.randint(1, 1 << 20), 0xFFFFFFFF, 0x80000000, rng.randint(floor, 0xFFFFFFFF)]
    )
    associated = pdu_type != wire.ASSOCIATE_RQ and rng.random() < 0.6
    payload = struct.pack(">BBL", pdu_type, 0, length) + _random_bytes(rng, 0, 100)
    return Case(
        "", 0, f"huge-length-type-{pdu_type}", payload, ANSWER, _associate(rng) if associated else None, allowed=_ABORT
    )


def _inconsistent_length(rng: random.Random) -> Case:
    """A PDU whose declared length is a little shorter or longer than what follows it."""
    associated = rng.random() < 0.5
    if associated:
        body = rng.choice(
            [
                wire.pdv(wire.ECHO_CONTEXT, wire.COMMAND | wire.LAST, wire.echo_command()),
                bytes(4),
            ]
        )
        pdu_type = wire.P_DATA if len(body) > 4 else rng.choice([wire.RELEASE_RQ, wire.ABORT])
    else:
        body, pdu_type = _associate(rng)[6:], wire.ASSOCIATE_RQ
    delta = rng.choice([-1, 1, -rng.randint(1, len(body)), rng.randint(1, 1000)])
    payload = wire.pdu(pdu_type, body, length=max(0, len(body) + delta))
    return Case("", 0, f"inconsistent-length-type-{pdu_type}", payload, EOF, _associate(rng) if associated else None)


def _uid_text(rng: random.Random) -> str:
    return rng.choice(
        [
            wire.VERIFICATION,
            wire.CT_IMAGE_STORAGE,
            "",
            " ",
            "1.2.3",
            "9" * 64,
            "1." + "2" * 200,
            "\\",
            "1.2.840.10008.1.1\\1.2.3",
            "\u00e9\u00e8",
            "\x00\x00",
            "../../etc",
            wire.IMPLICIT_LE,
            wire.EXPLICIT_LE,
            "1.2.840.10008.1.2.4.50",
            "1.2.840.10008.1.2.1.99",
        ]
    )


def _context(rng: random.Random) -> bytes:
    context_id = rng.choice([1, 3, 5, 0, 2, 4, 254, 255, 127, rng.randint(0, 255)])
    abstract = _uid_text(rng) if rng.random() < 0.4 else rng.choice([wire.VERIFICATION, wire.CT_IMAGE_STORAGE])
    syntaxes = [_uid_text(rng) if rng.random() < 0.4 else wire.IMPLICIT_LE for _ in range(rng.choice([0, 1, 1, 2, 25]))]
    body = struct.pack(">BBBB", context_id, 0, 0, 0)
    if rng.random() < 0.9:
        body += wire.item(0x30, abstract.encode("utf-8"))
    body += b"".join(wire.item(0x40, syntax.encode("utf-8")) for syntax in syntaxes)
    if rng.random() < 0.1:
        body += wire.item(rng.randint(0, 255), _random_bytes(rng, 0, 20))
    item_type = 0x20 if rng.random() < 0.95 else rng.choice([0x21, 0x00, 0xFF])
    return wire.item(item_type, body)


def _user_information(rng: random.Random) -> bytes:
    extra = []
    if rng.random() < 0.5:
        primary = _random_bytes(rng, 0, 300)
        identity = wire.item(
            0x58,
            struct.pack(">BBH", rng.choice([0, 1, 2, 3, 4, 5, 6, 255]), rng.randint(0, 1), len(primary))
            + primary
            + struct.pack(">H", 0),
        )
        extra.append(identity)
    if rng.random() < 0.3:
        # SCP/SCU role selection, asynchronous operations window, SOP class extended negotiation.
        uid = _uid_text(rng).encode("utf-8")
        extra.append(wire.item(0x54, struct.pack(">H", len(uid)) + uid + bytes([rng.randint(0, 2), rng.randint(0, 2)])))
    if rng.random() < 0.2:
        extra.append(wire.item(0x53, struct.pack(">HH", rng.randint(0, 0xFFFF), rng.randint(0, 0xFFFF))))
    if rng.random() < 0.2:
        extra.append(wire.item(0x56, _random_bytes(rng, 0, 40)))
    if rng.random() < 0.2:
        extra.append(wire.item(rng.choice([0x50, 0x51, 0x52, 0x55, 0x57, 0x59, 0x5A, 0xFF]), _random_bytes(rng, 0, 16)))
    maximum = rng.choice([0, 1, 16384, 0xFFFFFFFF, rng.randint(0, 1 << 20)])
    return wire.user_information(*extra, maximum_length=maximum)


def _mutated_associate_rq(rng: random.Random) -> Case:
    """An A-ASSOCIATE-RQ with odd presentation contexts, user information and fixed fields."""
    contexts = [_context(rng) for _ in range(rng.choice([0, 1, 2, 3, 8, 130]))]
    if isinstance(rng, Draw) and rng.kind == wire.COMMITMENT:
        contexts.append(wire.presentation_context(wire.COMMITMENT_CONTEXT, wire.STORAGE_COMMITMENT, wire.IMPLICIT_LE))
    user_info = _user_information(rng) if rng.random() < 0.9 else b""
    called = rng.choice(["STORESCP", "", " " * 16, "\u00ff" * 4, "A" * 16])
    request = bytearray(wire.associate_rq(contexts, user_info, called=called[:16].ljust(16)[:16]))
    if rng.random() < 0.1:
        request[6:8] = struct.pack(">H", rng.choice([0, 2, 0xFFFF]))  # protocol version
    if rng.random() < 0.1:
        # The application context item, made odd.
        name = rng.choice(["", "1.2.3", "\\", "1.2.840.10008.3.1.1.1" * 4]).encode()
        offset = 6 + 68
        size = struct.unpack_from(">H", request, offset + 2)[0]
        request[offset : offset + 4 + size] = wire.item(0x10, name)
        request[2:6] = struct.pack(">L", len(request) - 6)
    if rng.random() < 0.2:
        # An item length somewhere made wrong.
        offset = rng.randrange(6 + 68, len(request) - 2) if len(request) > 6 + 70 else 6 + 68
        request[offset : offset + 2] = struct.pack(">H", rng.randint(0, 0xFFFF))
    return Case("", 0, "associate-rq-mutated", bytes(request), ANSWER)


def _p_data_misuse(rng: random.Random) -> Case:
    """P-DATA that breaks the DIMSE rules while each PDU is well formed."""
    choice = rng.randrange(12)
    echo = wire.echo_command()
    store = wire.store_command(_uid(rng, 1))
    allowed: tuple[str, ...] | None = None
    expect = ANSWER
    if choice == 0:
        family, payload = (
            "data-before-command",
            wire.p_data(wire.pdv(wire.STORE_CONTEXT, wire.LAST, _random_bytes(rng, 1, 500))),
        )
        allowed = ("A-ABORT 0/0",)
    elif choice == 1:
        # Not 7: a commitment association accepts it (Storage Commitment), and a C-ECHO there is answered 0x0122.
        context_id = rng.choice([0, 2, 9, 127, 255])
        family = "unknown-context-id"
        payload = wire.p_data(wire.pdv(context_id, wire.COMMAND | wire.LAST, echo))
        allowed = ("A-ABORT 0/0",)
    elif choice == 2:
        family = "command-never-last-over-cap"
        payload = wire.p_data(wire.pdv(wire.STORE_CONTEXT, wire.COMMAND, bytes(8000))) * rng.randint(9, 20)
        allowed = ("A-ABORT 0/0",)
    elif choice == 3:
        family = "command-fragments-within-bounds"
        piece = rng.randint(1, 200)
        payload = wire.p_data(wire.pdv(wire.STORE_CONTEXT, wire.COMMAND, store[:piece]))
        payload += wire.p_data(wire.pdv(wire.STORE_CONTEXT, wire.COMMAND, bytes(rng.randint(0, 2000)))) * rng.randint(
            1, 20
        )
        expect = EOF
    elif choice == 4:
        family = "echo-declaring-data-set"
        payload = wire.p_data(
            wire.pdv(wire.ECHO_CONTEXT, wire.COMMAND | wire.LAST, wire.echo_command(wire.HAS_DATA_SET))
        )
        allowed = ("A-ABORT 0/0",)
    elif choice == 5:
        family = "data-never-last"
        payload = wire.p_data(wire.pdv(wire.STORE_CONTEXT, wire.COMMAND | wire.LAST, store))
        payload += wire.p_data(wire.pdv(wire.STORE_CONTEXT, 0, bytes(rng.randint(1, 16000)))) * rng.randint(1, 10)
        expect = EOF
    elif choice == 6:
        family = "pdv-length-past-pdu"
        fragment = bytes([wire.COMMAND | wire.LAST]) + echo
        body = struct.pack(">LB", len(fragment) + rng.randint(2, 5000), wire.ECHO_CONTEXT) + fragment
        payload = wire.pdu(wire.P_DATA, body)
    elif choice == 7:
        family = "pdv-short"
        payload = wire.pdu(wire.P_DATA, rng.choice([b"", b"\0", struct.pack(">L", 0), struct.pack(">LB", 1, 1)]))
        expect = EOF
    elif choice == 8:
        family = "unserved-command"
        command_field = rng.choice([0x0020, 0x0010, 0x0021, 0x0120, 0x8001, 0x8030, 0x0140, 0x0FFF, 0xFFFF, 0])
        command = wire.command_set(
            {0x0002: wire.VERIFICATION, 0x0100: command_field, 0x0110: 1, 0x0800: wire.NO_DATA_SET}
        )
        payload = wire.p_data(wire.pdv(wire.ECHO_CONTEXT, wire.COMMAND | wire.LAST, command))
    elif choice == 9:
        family = "command-element-past-end"
        command = bytearray(echo)
        cut = rng.randrange(8, len(command))
        payload = wire.p_data(wire.pdv(wire.ECHO_CONTEXT, wire.COMMAND | wire.LAST, bytes(command[:cut])))
        allowed = _ABORT
    elif choice == 10:
        family = "command-then-data-on-another-context"
        payload = wire.p_data(wire.pdv(wire.STORE_CONTEXT, wire.COMMAND | wire.LAST, store))
        payload += wire.p_data(wire.pdv(CT_IMPLICIT_CONTEXT, wire.LAST, DataSet(rng).encode()))
        allowed = ("A-ABORT 0/0",)
    else:
        family = "command-set-bit-flips"
        is_echo = rng.random() < 0.5
        command = bytearray(echo if is_echo else store)
        for _ in range(rng.randint(1, 4)):
            command[rng.randrange(len(command))] ^= 1 << rng.randrange(8)
        context_id = wire.ECHO_CONTEXT if is_echo else wire.STORE_CONTEXT
        payload = wire.p_data(wire.pdv(context_id, wire.COMMAND | wire.LAST, bytes(command)))
        expect = EOF  # a flipped Command Data Set Type may announce a data set that never comes
    return Case("", 0, f"p-data/{family}", payload, expect, _associate(rng), allowed=allowed)


def _out_of_order(rng: random.Random) -> Case:
    """Release and abort (and association requests) where the state machine does not expect them."""
    choice = rng.randrange(8)
    associated = True
    expect = ANSWER
    allowed: tuple[str, ...] | None = None
    if choice == 0:
        family, payload, associated, allowed = "release-rq-first", wire.release_rq(), False, ("A-ABORT 2/2",)
    elif choice == 1:
        family, payload, allowed = "release-rp-unsolicited", wire.release_rp(), ("A-ABORT 2/2",)
    elif choice == 2:
        family, payload, allowed = "second-associate-rq", _associate(rng), ("A-ABORT 2/2",)
    elif choice == 3:
        family, payload, allowed = "abort-then-more", wire.abort_rq(rng.randint(0, 2)) + wire.release_rq(), ("closed",)
    elif choice == 4:
        family, payload = "release-rq-twice", wire.release_rq() * 2
    elif choice == 5:
        family = "release-rq-mid-data-set"
        payload = wire.p_data(wire.pdv(wire.STORE_CONTEXT, wire.COMMAND | wire.LAST, wire.store_command(_uid(rng, 1))))
        payload += wire.p_data(wire.pdv(wire.STORE_CONTEXT, 0, DataSet(rng).encode()[:40])) + wire.release_rq()
    elif choice == 6:
        family, payload, associated, allowed = "abort-first", wire.abort_rq(), False, ("closed",)
    else:
        family, payload, allowed = (
            "associate-ac-from-requestor",
            wire.pdu(wire.ASSOCIATE_AC, _associate(rng)[6:]),
            ("A-ABORT 2/2",),
        )
    return Case("", 0, f"order/{family}", payload, expect, _associate(rng) if associated else None, allowed=allowed)


_PDU_GENERATORS: list[Callable[[random.Random], Case]] = [
    _garbage,
    _truncated,
    _mutated_stream,
    _every_pdu_type,
    _every_pdu_type,
    _huge_length,
    _inconsistent_length,
    _mutated_associate_rq,
    _mutated_associate_rq,
    _mutated_associate_rq,
    _p_data_misuse,
    _p_data_misuse,
    _p_data_misuse,
    _out_of_order,
    _out_of_order,
]


# -- data set level ----------------------------------------------------------------------------------------------


_LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
UNDEFINED = 0xFFFFFFFF


def element(tag: int, vr: str, value: bytes, *, length: int | None = None, explicit: bool = True) -> bytes:
    """One data element in little endian (explicit or implicit VR); ``length`` overrides the real one."""
    size = len(value) if length is None else length
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if not explicit:
        return head + struct.pack("<L", size) + value
    code = vr.encode("latin-1")[:2].ljust(2, b"?")
    if vr in _LONG_VRS:
        return head + code + struct.pack("<HL", 0, size) + value
    return head + code + struct.pack("<H", size & 0xFFFF) + value


def _text_value(text: str, pad: bytes = b" ") -> bytes:
    raw = text.encode("utf-8")
    return raw + pad * (len(raw) % 2)


def _uid(rng: random.Random, kind: int) -> str:
    return f"{UID_ROOT}.{kind}.{rng.randrange(1 << 40)}"


ITEM = 0xFFFEE000
ITEM_END = 0xFFFEE00D
SEQUENCE_END = 0xFFFEE0DD


def _item(body: bytes, *, undefined: bool = False) -> bytes:
    if undefined:
        return struct.pack("<HHL", 0xFFFE, 0xE000, UNDEFINED) + body + struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
    return struct.pack("<HHL", 0xFFFE, 0xE000, len(body)) + body


class DataSet:
    """A small valid CT data set, as a list of encoded elements in tag order, ready to be damaged."""

    def __init__(self, rng: random.Random, *, explicit: bool = True) -> None:
        self.explicit = explicit
        self.sop_instance_uid = _uid(rng, 1)
        self.study_instance_uid = _uid(rng, 2)
        self.series_instance_uid = _uid(rng, 3)
        reference = element(0x00081150, "UI", _text_value(wire.CT_IMAGE_STORAGE, b"\0"), explicit=explicit)
        reference += element(0x00081155, "UI", _text_value(_uid(rng, 4), b"\0"), explicit=explicit)
        self.elements: list[tuple[int, str, bytes]] = [
            (0x00080005, "CS", _text_value("ISO_IR 100")),
            (0x00080016, "UI", _text_value(wire.CT_IMAGE_STORAGE, b"\0")),
            (0x00080018, "UI", _text_value(self.sop_instance_uid, b"\0")),
            (0x00080020, "DA", b"20261204"),
            (0x00080060, "CS", b"CT"),
            (0x00081140, "SQ", _item(reference)),
            (0x00100010, "PN", _text_value("Fuzz^Case")),
            (0x00100020, "LO", _text_value(f"FUZZ{rng.randrange(10000)}")),
            (0x0020000D, "UI", _text_value(self.study_instance_uid, b"\0")),
            (0x0020000E, "UI", _text_value(self.series_instance_uid, b"\0")),
            (0x00280010, "US", struct.pack("<H", 4)),
            (0x00280011, "US", struct.pack("<H", 4)),
            (0x00280100, "US", struct.pack("<H", 16)),
            (0x7FE00010, "OW", rng.randbytes(32)),
        ]

    def encode(self, overrides: dict[int, bytes] | None = None) -> bytes:
        overrides = overrides or {}
        return b"".join(
            overrides.get(tag, element(tag, vr, value, explicit=self.explicit)) for tag, vr, value in self.elements
        )

    def set_uid(self, tag: int, text: str) -> None:
        self.elements = [(t, vr, _text_value(text, b"\0") if t == tag else value) for t, vr, value in self.elements]

    def index(self, tag: int) -> int:
        return [t for t, _, _ in self.elements].index(tag)


# Data set fragments are cut at this size at most: below any MAXIMUM_PDU_SIZE the SCP may run with.
FRAGMENT_LIMIT = 16000


def _store_pdus(context_id: int, command: bytes, data_set: bytes, fragments: int = 1) -> bytes:
    """A C-STORE-RQ's command and its data set, in ``fragments`` P-DATA-TF PDUs (more when it is large)."""
    payload = wire.p_data(wire.pdv(context_id, wire.COMMAND | wire.LAST, command))
    size = max(1, min(FRAGMENT_LIMIT, -(-len(data_set) // max(1, fragments))))
    pieces = [data_set[start : start + size] for start in range(0, len(data_set), size)] or [b""]
    for number, piece in enumerate(pieces):
        payload += wire.p_data(wire.pdv(context_id, wire.LAST if number == len(pieces) - 1 else 0, piece))
    return payload


def _store_case(rng: random.Random, family: str, data_set: bytes, instance: str, *, context_id: int = 3) -> Case:
    command = wire.store_command(instance, message_id=rng.randint(1, 0xFFFF))
    fragments = rng.choice([1, 1, 1, 2, 3, 7])
    payload = _store_pdus(context_id, command, data_set, fragments)
    return Case("", 0, f"data-set/{family}", payload, STORE_STATUS, _associate(rng))


def valid_store(rng: random.Random) -> Case:
    explicit = rng.random() < 0.5
    data_set = DataSet(rng, explicit=explicit)
    context_id = wire.STORE_CONTEXT if explicit else CT_IMPLICIT_CONTEXT
    case = _store_case(rng, "valid", data_set.encode(), data_set.sop_instance_uid, context_id=context_id)
    case.status = 0x0000
    case.level = "dataset"
    return case


def _bit_flips(rng: random.Random) -> Case:
    data_set = DataSet(rng)
    raw = bytearray(data_set.encode())
    # Mostly in the header elements, where the parser looks.
    end = len(raw) if rng.random() < 0.3 else min(len(raw), 260)
    for _ in range(rng.randint(1, 8)):
        raw[rng.randrange(end)] ^= 1 << rng.randrange(8)
    return _store_case(rng, "bit-flips", bytes(raw), data_set.sop_instance_uid)


def _truncated_data_set(rng: random.Random) -> Case:
    data_set = DataSet(rng)
    raw = data_set.encode()
    return _store_case(rng, "truncated", raw[: rng.randrange(len(raw))], data_set.sop_instance_uid)


def _length_past_end(rng: random.Random) -> Case:
    data_set = DataSet(rng)
    tag, vr, value = rng.choice(data_set.elements)
    length = rng.choice([len(value) + 2, len(value) + rng.randint(1, 1 << 20), 0xFFFFFFF0, 0x7FFFFFFF])
    if vr not in _LONG_VRS:
        length &= 0xFFFF
        length = max(length, len(value) + 1)
    damaged = element(tag, vr, value, length=length)
    return _store_case(rng, f"length-past-end-{tag:08X}", data_set.encode({tag: damaged}), data_set.sop_instance_uid)


def _undefined_length(rng: random.Random) -> Case:
    data_set = DataSet(rng)
    tag, vr, value = rng.choice([e for e in data_set.elements if e[1] in ("SQ", "OW")] + [data_set.elements[2]])
    as_vr = vr if rng.random() < 0.5 else "UN"
    damaged = element(tag, as_vr, value, length=UNDEFINED)
    if rng.random() < 0.5:
        damaged += struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    return _store_case(
        rng, f"undefined-length-{tag:08X}-{as_vr}", data_set.encode({tag: damaged}), data_set.sop_instance_uid
    )


def _unclosed_sequence(rng: random.Random) -> Case:
    """A sequence (and item) of undefined length that is never delimited; the data set ends inside it."""
    data_set = DataSet(rng)
    inner = element(0x00081150, "UI", _text_value(wire.CT_IMAGE_STORAGE, b"\0"))
    unclosed = element(0x00081140, "SQ", b"", length=UNDEFINED) + struct.pack("<HHL", 0xFFFE, 0xE000, UNDEFINED) + inner
    if rng.random() < 0.5:
        unclosed += struct.pack("<HHL", 0xFFFE, 0xE00D, 0)  # the item closed, not the sequence
    raw = data_set.encode({0x00081140: unclosed})
    # Everything after the sequence is inside it now; drop it or keep it.
    if rng.random() < 0.5:
        raw = raw[: raw.index(unclosed) + len(unclosed)]
    return _store_case(rng, "unclosed-sequence", raw, data_set.sop_instance_uid)


def _deep_nesting(rng: random.Random) -> Case:
    """Sequences inside items inside sequences, hundreds to thousands deep, before the UIDs the SCP reads."""
    data_set = DataSet(rng)
    undefined = rng.random() < 0.6
    # Defined lengths are built inside out (quadratic): fewer levels.
    depth = rng.choice([50, 500, 1000, 3000, 10000] if undefined else [50, 500, 1000, 2000])
    closed = rng.random() < 0.7
    nested = b""
    if undefined:
        head = element(0x00081140, "SQ", b"", length=UNDEFINED) + struct.pack("<HHL", 0xFFFE, 0xE000, UNDEFINED)
        tail = struct.pack("<HHL", 0xFFFE, 0xE00D, 0) + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
        nested = head * depth + (tail * depth if closed else b"")
    else:
        for _ in range(depth):
            nested = element(0x00081140, "SQ", _item(nested))
    return _store_case(
        rng,
        f"nested-{depth}-{'undefined' if undefined else 'defined'}",
        data_set.encode({0x00081140: nested}),
        data_set.sop_instance_uid,
    )


def _odd_vr(rng: random.Random) -> Case:
    """(0008,0016) or another element with a VR that does not exist, or the wrong one."""
    data_set = DataSet(rng)
    tag = rng.choice([0x00080016, 0x00080016, 0x00080018, 0x0020000D, 0x00080005])
    value = data_set.elements[data_set.index(tag)][2]
    vr = rng.choice(["U\t", "ZZ", "ui", "\0\0", "UN", "SQ", "OB", "US", "FD", "AT"])
    damaged = element(tag, vr, value)
    return _store_case(rng, f"odd-vr-{tag:08X}", data_set.encode({tag: damaged}), data_set.sop_instance_uid)


def _hostile_uid(rng: random.Random) -> Case:
    """A hostile UID in the request, in the data set, or in both alike (so only the UID check can stop it)."""
    data_set = DataSet(rng)
    hostile = rng.choice(HOSTILE_UIDS)
    where = rng.choice(["request", "data-set", "both", "study", "series"])
    instance = data_set.sop_instance_uid
    if where in ("request", "both"):
        instance = hostile
    if where in ("data-set", "both"):
        data_set.set_uid(0x00080018, hostile)
    if where == "study":
        data_set.set_uid(0x0020000D, hostile)
    if where == "series":
        data_set.set_uid(0x0020000E, hostile)
    return _store_case(rng, f"hostile-uid-{where}", data_set.encode(), instance)


def _wrong_encoding(rng: random.Random) -> Case:
    """Implicit VR data on the explicit context and the reverse; or a Part 10 preamble sent as the data set."""
    explicit = rng.random() < 0.5
    data_set = DataSet(rng, explicit=not explicit)
    raw = data_set.encode()
    if rng.random() < 0.3:
        raw = bytes(128) + b"DICM" + raw
    context_id = wire.STORE_CONTEXT if explicit else CT_IMPLICIT_CONTEXT
    return _store_case(rng, "wrong-encoding", raw, data_set.sop_instance_uid, context_id=context_id)


def _random_data_set(rng: random.Random) -> Case:
    return _store_case(rng, "random-bytes", _random_bytes(rng, 0, 4000), _uid(rng, 1))


_DATASET_GENERATORS: list[Callable[[random.Random], Case]] = [
    valid_store,
    _bit_flips,
    _bit_flips,
    _bit_flips,
    _truncated_data_set,
    _truncated_data_set,
    _length_past_end,
    _length_past_end,
    _undefined_length,
    _unclosed_sequence,
    _deep_nesting,
    _odd_vr,
    _hostile_uid,
    _hostile_uid,
    _hostile_uid,
    _wrong_encoding,
    _random_data_set,
]


# -- storage commitment level ----------------------------------------------------------------------------------------


def _references(rng: random.Random, count: int) -> list[tuple[str, str]]:
    return [(wire.CT_IMAGE_STORAGE, _uid(rng, 5)) for _ in range(count)]


def _n_action_case(
    rng: random.Random, family: str, information: bytes, *, action_type: int = 1, context_id: int | None = None
) -> Case:
    command = wire.n_action_command(message_id=rng.randint(1, 0xFFFF), action_type=action_type)
    payload = _store_pdus(wire.COMMITMENT_CONTEXT if context_id is None else context_id, command, information)
    return Case("", 0, f"commitment/{family}", payload, STORE_STATUS, _associate(rng))


def _commitment_request(rng: random.Random) -> bytes:
    return wire.commitment_request(_uid(rng, 6), _references(rng, rng.choice([1, 1, 2, 5, 40])))


def valid_commitment_request(rng: random.Random) -> Case:
    """An N-ACTION the SCP accepts (0x0000) on a commitment association; its report is answered."""
    case = _n_action_case(rng, "valid", _commitment_request(rng))
    case.status = 0x0000
    case.level = "commitment"
    return case


def _n_action_bit_flips(rng: random.Random) -> Case:
    raw = bytearray(_commitment_request(rng))
    for _ in range(rng.randint(1, 6)):
        raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
    return _n_action_case(rng, "bit-flips", bytes(raw))


def _n_action_truncated(rng: random.Random) -> Case:
    raw = _commitment_request(rng)
    return _n_action_case(rng, "truncated", raw[: rng.randrange(len(raw))])


def _n_action_random_bytes(rng: random.Random) -> Case:
    return _n_action_case(rng, "random-bytes", _random_bytes(rng, 0, 2000))


def _n_action_hostile_uid(rng: random.Random) -> Case:
    """A hostile Transaction UID (the record's file name) or referenced UID: refused, never a path."""
    hostile = rng.choice(HOSTILE_UIDS)
    if rng.random() < 0.5:
        information = wire.commitment_request(hostile, _references(rng, 1))
        return _n_action_case(rng, "hostile-transaction-uid", information)
    references = _references(rng, 2)
    references[rng.randrange(2)] = (rng.choice([wire.CT_IMAGE_STORAGE, hostile]), hostile)
    return _n_action_case(rng, "hostile-referenced-uid", wire.commitment_request(_uid(rng, 6), references))


def _n_action_many_references(rng: random.Random) -> Case:
    """None, or hundreds of references. Requests at commitment.REFERENCES_LIMIT (20,000) are decoded whole, at about
    20 times their bytes, and in local mode evaluated by walking the store once per reference (seconds per thousand
    on a store the other levels filled): tests/container/test_hostile_input.py holds them."""
    count = rng.choice([0, 200, 400])
    return _n_action_case(rng, f"references-{count}", wire.commitment_request(_uid(rng, 6), _references(rng, count)))


def _n_action_nested(rng: random.Random) -> Case:
    """An item of the Referenced SOP Sequence holding sequences hundreds deep."""
    nested = b""
    for _ in range(rng.choice([50, 500, 1500])):
        nested = element(0x00081199, "SQ", _item(nested), explicit=False)
    information = element(0x00081195, "UI", _text_value(_uid(rng, 6), b"\0"), explicit=False)
    information += element(0x00081199, "SQ", _item(nested), explicit=False)
    return _n_action_case(rng, "nested", information)


def _n_action_command_misuse(rng: random.Random) -> Case:
    """Another action type, SOP class or instance; N-ACTION on another context; an unsolicited N-EVENT-REPORT-RSP."""
    choice = rng.randrange(5)
    information = _commitment_request(rng)
    if choice == 0:
        return _n_action_case(rng, "action-type", information, action_type=rng.choice([0, 2, 3, 0xFFFF]))
    if choice == 1:
        context_id = rng.choice([1, 3, 5, 9])
        case = _n_action_case(rng, "on-another-context", information, context_id=context_id)
        if context_id in (wire.ECHO_CONTEXT, wire.STORE_CONTEXT, CT_IMPLICIT_CONTEXT):
            case.status = 0x0122  # SOP class not supported: that message refused, the association kept
        else:
            case.allowed = ("A-ABORT 0/0",)  # a context never accepted: nothing to answer on
        return case
    if choice in (2, 3):
        element_number = 0x0003 if choice == 2 else 0x1001
        value = rng.choice([wire.CT_IMAGE_STORAGE, "1.2.3", "", wire.STORAGE_COMMITMENT + ".1"])
        elements: dict[int, int | str | bytes] = {
            0x0003: wire.STORAGE_COMMITMENT,
            0x0100: wire.N_ACTION_RQ,
            0x0110: 1,
            0x0800: wire.HAS_DATA_SET,
            0x1001: wire.STORAGE_COMMITMENT_INSTANCE,
            0x1008: 1,
        }
        elements[element_number] = value
        payload = _store_pdus(wire.COMMITMENT_CONTEXT, wire.command_set(elements), information)
        family = "requested-sop-class" if choice == 2 else "requested-sop-instance"
        return Case("", 0, f"commitment/{family}", payload, STORE_STATUS, _associate(rng))
    response = wire.command_set(
        {
            0x0002: wire.STORAGE_COMMITMENT,
            0x0100: _N_EVENT_REPORT_RSP,
            0x0120: rng.randint(0, 0xFFFF),
            0x0800: wire.NO_DATA_SET,
            0x0900: 0,
        }
    )
    payload = wire.p_data(wire.pdv(wire.COMMITMENT_CONTEXT, wire.COMMAND | wire.LAST, response))
    return Case("", 0, "commitment/unsolicited-event-report-rsp", payload, EOF, _associate(rng))


_COMMITMENT_GENERATORS: list[Callable[[random.Random], Case]] = [
    valid_commitment_request,
    valid_commitment_request,
    _n_action_bit_flips,
    _n_action_bit_flips,
    _n_action_bit_flips,
    _n_action_truncated,
    _n_action_truncated,
    _n_action_random_bytes,
    _n_action_hostile_uid,
    _n_action_hostile_uid,
    _n_action_many_references,
    _n_action_nested,
    _n_action_command_misuse,
    _n_action_command_misuse,
]
