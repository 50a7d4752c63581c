"""Our own fuzzer (issue 9): seeded hostile input against one SCP process, checked after every batch.

Cases come from support/fuzz.py: PDU level (garbage, truncation, every PDU type, huge and inconsistent lengths,
mutated A-ASSOCIATE-RQ items, P-DATA misuse, release and abort out of order) and data set level (C-STOREs whose
data set or request UIDs are damaged). Every case must be answered (A-ASSOCIATE-RJ, A-ABORT, a status, a release
or a close) within support/fuzz.ANSWER_SECONDS, far below the SCP's timers. After every ``BATCH`` cases:

- the process is alive and answers DCMTK's echoscu;
- its peak resident memory (VmHWM) stays below a bound derived from its configuration (docs/conformance.md 2.3);
- its threads and open descriptors are back to their idle count, and the spool folder is empty;
- nothing was written outside the storage folder, and nothing inside it has a name a UID could not make.

Every case runs on both kinds of association (support/wire.py): storage and verification only, and with Storage
Commitment Push Model negotiated as well (context 7; the SCP offers it in local mode). The cases of a seed are the
same on both but for the association request, and so must be the answers they get
(test_both_kinds_of_association_get_the_same_answers compares them case by case).

FUZZ_SEED (default 9) and FUZZ_CASES (default 2000 per kind of association, both levels together) override the
run; the seed is printed.
The four defects of the issue are the first cases of each level; their full regression tests are in
tests/container/test_hostile_input.py (test_pdu_declaring_4_gib_is_aborted_without_allocating_it,
test_fragments_that_never_complete_abort_the_association,
test_malformed_association_request_is_answered_and_closed_at_once,
test_store_request_with_unusable_instance_uid_gets_a_failure_status).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dicom_store_contract import limits
from dicom_store_scp import protocol, statuses
from dicom_store_scp.commitment import model as commitment
from dicom_store_scp.commitment import scheduler
from support import fuzz, wire
from support.scp import RunningScp, echoscu, launch_scp

SEED = int(os.environ.get("FUZZ_SEED", "9"))
CASES = int(os.environ.get("FUZZ_CASES", "2000"))
BATCH = 50
# Share of the cases at the PDU level; the rest are data set level.
PDU_SHARE = 0.55
# How long threads, descriptors and the spool folder may take to return to idle after a batch.
SETTLE_SECONDS = 5.0

MAXIMUM_PDU_SIZE = limits.MAXIMUM_PDU_SIZE.whole
# docs/conformance.md 2.3: per association, one PDU of MAXIMUM_PDU_SIZE + 12 bytes held about four times over
# while decoded, a command set, and (before acceptance) an A-ASSOCIATE-RQ held a few times over. The fuzzer has
# one association open at a time (and echoscu one more); the allocator keeps what it freed, hence the slack.
PER_ASSOCIATION = 4 * (MAXIMUM_PDU_SIZE + 12) + protocol.COMMAND_SET_LIMIT + 4 * protocol.ASSOCIATION_PDU_LIMIT
ALLOCATOR_SLACK = 48 * 1024 * 1024
KNOWN_STATUSES = {statuses.SUCCESS, *statuses.REASONS}
# N-ACTION-RSP statuses of a storage commitment request (commitment.py).
KNOWN_STATUSES |= {commitment.NO_SUCH_ACTION, commitment.INVALID_ARGUMENT_VALUE, commitment.RESOURCE_LIMITATION}
# Storage commitment cases (commitment associations only), besides CASES.
COMMITMENT_CASES = max(1, CASES // 20)
# Threads the storage commitment service keeps once started (its delivery pool, commitment.DELIVERY_THREADS): not
# an association's, so not back to idle after a batch, and bounded.
COMMITMENT_THREADS = scheduler.DELIVERY_THREADS
# Loggers whose errors mean an exception inside the SCP: its own code, pynetdicom's state machine and upper layer,
# and event handlers. (pynetdicom.utils and pynetdicom.pdu_items log a peer's invalid values as errors.)
_RAISING = ("dicom_store_scp", "pynetdicom.fsm", "pynetdicom.dul", "pynetdicom.events", "pynetdicom.association")
_PATH_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# Each case's answer, by (level, kind of association) and case number: the two kinds must get the same.
_ANSWERS: dict[tuple[str, str], dict[int, str]] = {}


@dataclass
class Target:
    scp: RunningScp
    root: Path  # everything the SCP may write is under root/deep/er/than/traversal
    home: Path
    idle_threads: int
    idle_fds: int
    memory_bound: int
    escaped_before: bool


def _status(pid: int) -> dict[str, int]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            values[key] = int(rest.split()[0]) * (1024 if key.startswith("Vm") else 1)
    return values


def _fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def _wait_for_idle(target: Target) -> tuple[int, int, list[str]]:
    pid = target.scp.process.pid
    spool = target.scp.storage / ".spool"
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        threads, fds = _status(pid)["Threads"], _fds(pid)
        spooled = sorted(p.name for p in spool.iterdir())
        idle = threads <= target.idle_threads + COMMITMENT_THREADS and fds <= target.idle_fds and not spooled
        if idle or time.monotonic() > deadline:
            return threads, fds, spooled
        time.sleep(0.05)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    root = tmp_path_factory.mktemp("fuzz")
    # Deeper than the "../" the hostile UIDs climb, so an escape would still land inside root.
    home = root / "a" / "b" / "c" / "d" / "e"
    (home / "cwd").mkdir(parents=True)
    (home / "tmp").mkdir()
    escaped_before = Path("/tmp/escaped").exists()
    scp = launch_scp(
        home,
        *("--acse-timeout", "60", "--network-timeout", "60", "--dimse-timeout", "60"),
        *("--maximum-pdu-size", str(MAXIMUM_PDU_SIZE)),
        env={"TMPDIR": str(home / "tmp")},
        cwd=home / "cwd",
    )
    try:
        # Warm up (imports, first association, first store), then take the idle figures.
        echo = echoscu(scp.port)
        assert echo.returncode == 0, echo.stdout + echo.stderr
        for number in range(3):
            fuzz.run_case(scp.port, fuzz.valid_store(random.Random(number)))
        # The storage commitment threads (commitment.py) start with the first request, and stay.
        fuzz.run_case(scp.port, fuzz.valid_commitment_request(fuzz.Draw("warm-up", wire.COMMITMENT)))
        time.sleep(1.0)
        pid = scp.process.pid
        idle = Target(scp, root, home, _status(pid)["Threads"], _fds(pid), 0, escaped_before)
        idle.idle_threads, idle.idle_fds, _ = _wait_for_idle(idle)
        idle.memory_bound = _status(pid)["VmRSS"] + 2 * PER_ASSOCIATION + ALLOCATOR_SLACK
        yield idle
    finally:
        if scp.process.poll() is None:
            scp.process.kill()
            scp.process.wait(timeout=10)


def _check_after_batch(target: Target, where: str) -> None:
    scp = target.scp
    assert scp.process.poll() is None, f"{where}: the SCP exited with {scp.process.returncode}"
    threads, fds, spooled = _wait_for_idle(target)
    bound = target.idle_threads + COMMITMENT_THREADS
    assert threads <= bound, f"{where}: {threads} threads, {target.idle_threads} when idle (+{COMMITMENT_THREADS})"
    assert fds <= target.idle_fds, f"{where}: {fds} open descriptors, {target.idle_fds} when idle"
    assert spooled == [], f"{where}: spool files left: {spooled[:5]}"
    echo = echoscu(scp.port)
    assert echo.returncode == 0, f"{where}: C-ECHO failed: {echo.stdout}{echo.stderr}"
    peak = _status(scp.process.pid)["VmHWM"]
    assert peak < target.memory_bound, f"{where}: VmHWM {peak >> 20} MiB, bound {target.memory_bound >> 20} MiB"
    _assert_nothing_outside_storage(target, where)
    lines = scp.logs()
    failures = [line for line in lines if line.get("level") == "ERROR" and line.get("logger", "").startswith(_RAISING)]
    assert failures == [], f"{where}: exceptions in the SCP: {failures[:3]}"
    # Not JSON: a Python warning or a traceback printed to stderr (a warning is also remembered, see handlers.py).
    raw = [line["message"] for line in lines if line.get("level") == "RAW"]
    assert raw == [], f"{where}: lines that are not JSON: {raw[:5]}"


def _assert_nothing_outside_storage(target: Target, where: str) -> None:
    storage = target.scp.storage
    on_the_way = {target.home, *target.home.parents, target.home / "cwd", target.home / "tmp"}
    for path in target.root.rglob("*"):
        if path.is_symlink():
            raise AssertionError(f"{where}: a symbolic link was made: {path}")
        if path == target.scp.log_path or (path.is_dir() and path in on_the_way):
            continue
        if path != storage and storage not in path.parents:
            raise AssertionError(f"{where}: written outside the storage folder: {path}")
        # .spool and commitments/.locks are the SCP's own fixed names, not made from what a peer sent.
        bad = [
            part
            for part in path.relative_to(storage).parts
            if not _PATH_PART.match(part) and part not in (".spool", ".locks")
        ]
        assert not bad, f"{where}: a name made from hostile input: {path}"
    assert Path("/tmp/escaped").exists() == target.escaped_before, f"{where}: /tmp/escaped was written"


def _answer(outcome: fuzz.Outcome) -> str:
    return " ".join([outcome.answer, *(f"0x{status:04X}" for status in outcome.statuses)])


def _fuzz(target: Target, level: str, count: int, kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    answers: Counter[str] = Counter()
    stored: Counter[str] = Counter()
    slowest = 0.0
    started = time.monotonic()
    batch: list[fuzz.Case] = []
    answered = _ANSWERS.setdefault((level, kind), {})
    for case in fuzz.cases(SEED, count, level, kind):
        outcome = fuzz.run_case(target.scp.port, case)
        answered[case.number] = _answer(outcome)
        unknown = [s for s in outcome.statuses if s not in KNOWN_STATUSES]
        assert not unknown, f"{case.label}: statuses {[f'0x{s:04X}' for s in unknown]} are not in statuses.py"
        answers[outcome.answer if not outcome.statuses else f"status 0x{outcome.statuses[0]:04X}"] += 1
        if statuses.SUCCESS in outcome.statuses and case.level in ("dataset", "commitment"):
            stored[case.family] += 1
        slowest = max(slowest, outcome.seconds)
        batch.append(case)
        if len(batch) == BATCH or case.number == count - 1:
            _check_after_batch(target, f"after {batch[0].label} .. {case.label}")
            batch = []
    peak = _status(target.scp.process.pid)["VmHWM"]
    with capsys.disabled():
        print(
            f"\nfuzz {level}, {kind} associations: FUZZ_SEED={SEED}, {count} cases in "
            f"{time.monotonic() - started:.1f} s, "
            f"slowest answer {slowest:.2f} s, VmHWM {peak >> 20} MiB (bound {target.memory_bound >> 20} MiB); "
            f"answers: {dict(sorted(answers.items()))}; stored: {dict(stored)}"
        )
    # Hostile UIDs never make it into storage; valid stores do.
    assert not [family for family in stored if "hostile-uid" in family], stored
    if level == "dataset" and count >= 100:
        assert stored["data-set/valid"] > 0, stored
    if level == "commitment" and count >= 100:
        assert stored["commitment/valid"] > 0, stored


@pytest.mark.slow
@pytest.mark.parametrize("kind", wire.ASSOCIATION_KINDS)
def test_pdu_level_cases_are_answered_and_leave_nothing_behind(target, kind, capsys):
    _fuzz(target, "pdu", round(CASES * PDU_SHARE), kind, capsys)


@pytest.mark.slow
@pytest.mark.parametrize("kind", wire.ASSOCIATION_KINDS)
def test_data_set_level_cases_are_answered_and_leave_nothing_behind(target, kind, capsys):
    _fuzz(target, "dataset", CASES - round(CASES * PDU_SHARE), kind, capsys)


def test_cases_are_deterministic_for_a_seed():
    first = [(c.family, c.payload, c.expect) for c in fuzz.cases(SEED, 60, "pdu")]
    again = [(c.family, c.payload, c.expect) for c in fuzz.cases(SEED, 60, "pdu")]
    other = [(c.family, c.payload, c.expect) for c in fuzz.cases(SEED + 1, 60, "pdu")]
    assert first == again
    assert first != other
    with contextlib.suppress(StopIteration):
        assert next(fuzz.cases(SEED, 1, "dataset")).family.startswith("issue9-")


@pytest.mark.slow
def test_storage_commitment_cases_are_answered_and_leave_nothing_behind(target, capsys):
    """N-ACTION misuse: only an association that negotiated Storage Commitment carries it (support/fuzz.py)."""
    _fuzz(target, "commitment", COMMITMENT_CASES, wire.COMMITMENT, capsys)


_LEVEL_COUNTS = {"pdu": round(CASES * PDU_SHARE), "dataset": CASES - round(CASES * PDU_SHARE)}


@pytest.mark.slow
@pytest.mark.parametrize("level", ["pdu", "dataset"])
def test_both_kinds_of_association_get_the_same_answers(target, level, capsys):
    """Every case whose bytes are the same on both kinds (its association request apart) gets the same answer."""
    answers = {}
    for kind in wire.ASSOCIATION_KINDS:
        answers[kind] = _ANSWERS.get((level, kind)) or {
            case.number: _answer(fuzz.run_case(target.scp.port, case))
            for case in fuzz.cases(SEED, _LEVEL_COUNTS[level], level, kind)
        }
    differ: Counter[str] = Counter()
    for case in fuzz.cases(SEED, _LEVEL_COUNTS[level], level):
        if case.family.startswith(_BUILT_ON_THE_REQUEST):
            continue
        storage, commitment = answers[wire.STORAGE][case.number], answers[wire.COMMITMENT][case.number]
        if storage != commitment:
            differ[f"{case.family}: {storage} (storage) / {commitment} (commitment)"] += 1
    with capsys.disabled():
        print(f"\nfuzz {level}, answers that differ by kind of association: {dict(differ)}")
    assert not differ, differ.most_common()


_BUILT_ON_THE_REQUEST = (
    "truncated",
    "stream-bit-flips",
    "associate-rq-mutated",
    "inconsistent-length-type-1",
    "pdu-type-1-",
    "pdu-type-2-",
    "order/second-associate-rq",
    "order/associate-ac-from-requestor",
)


@pytest.mark.parametrize("level", ["pdu", "dataset"])
def test_commitment_cases_are_the_storage_cases_with_the_commitment_request(level):
    """The same draws on both kinds: only the association request (in a case's payload too) differs."""
    storage_request, commitment_request = fuzz.ASSOCIATIONS[wire.STORAGE], fuzz.ASSOCIATIONS[wire.COMMITMENT]
    proposed = wire.presentation_context(wire.COMMITMENT_CONTEXT, wire.STORAGE_COMMITMENT, wire.IMPLICIT_LE)
    assert commitment_request == wire.associate_rq([*fuzz.ASSOCIATION_CONTEXTS, proposed])
    pairs = zip(fuzz.cases(SEED, 300, level), fuzz.cases(SEED, 300, level, wire.COMMITMENT), strict=True)
    for storage, other in pairs:
        assert (storage.family, storage.expect, storage.allowed, storage.status) == (
            other.family,
            other.expect,
            other.allowed,
            other.status,
        )
        if storage.associate is not None:
            assert (storage.associate, other.associate) == (storage_request, commitment_request)
        # Cases whose payload carries an A-ASSOCIATE-RQ (or its body) carry the commitment kind's; no other differs.
        if not storage.family.startswith(_BUILT_ON_THE_REQUEST):
            assert other.payload == storage.payload, storage.label
