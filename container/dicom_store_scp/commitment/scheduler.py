"""The engine: ``Commitments`` records each request, evaluates it until every instance is final, then delivers its
report once, retrying with backoff until the report timeout; it also takes over pending transactions a stopped
process or task left. Where transactions are recorded (``Transactions``) and how outcomes are read (``Outcomes``)
are the protocols local.py and dynamo.py implement; how a report is sent is the ``Sender`` (sender.py).

Association threads only record and enqueue: evaluating and delivering run on this module's own threads, so a
requester that cannot be reached delays nobody else.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, Protocol

from ..storage import StorageError
from .information import read_request
from .model import (
    DUPLICATE_TRANSACTION_UID,
    EVENT_ALL_COMMITTED,
    EVENT_FAILURES_EXIST,
    INVALID_ARGUMENT_VALUE,
    LOG,
    RESOURCE_LIMITATION,
    RETENTION,
    SUCCESS,
    InvalidRequest,
    Outcome,
    Transaction,
    _iso,
    _log,
    _now,
    _parse_iso,
)

# Delivery attempts back off from FIRST_RETRY_SECONDS, doubling up to MAX_RETRY_SECONDS, until the timeout.
FIRST_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 60.0
# How often a running SCP looks for pending transactions nobody reports (their process or task stopped).
RECOVER_EVERY_SECONDS = 60.0
# Reports delivered at once; a requester that cannot be reached holds one of these for a connection timeout.
DELIVERY_THREADS = 4


class DeliveryError(Exception):
    """The report could not be delivered this time (the message says why)."""


Sender = Callable[[Transaction, Any], str]


class Transactions(Protocol):
    """Where transactions are recorded, and which process (or task) reports each."""

    def prepare(self) -> None: ...
    def create(self, transaction: Transaction) -> bool: ...
    def update(self, transaction: Transaction) -> None: ...
    def load(self, record_id: str) -> Transaction | None: ...
    def record_ids(self) -> list[str]: ...
    def claim(self, record_id: str) -> bool: ...
    def release(self, record_id: str) -> None: ...
    def remove(self, record_id: str) -> None: ...


class Outcomes(Protocol):
    def evaluate(self, transaction: Transaction) -> Outcome: ...


class Commitments:
    """Records requests, waits until their instances are final, delivers each report once.

    ``deliver(transaction, association)`` sends the report and returns how ("same-association" or
    "new-association"); it raises when it could not. The association is the requesting one while this process
    knows it, else None.
    """

    def __init__(
        self,
        transactions: Transactions,
        outcomes: Outcomes,
        deliver: Sender,
        report_timeout: float,
        first_retry: float = FIRST_RETRY_SECONDS,
        max_retry: float = MAX_RETRY_SECONDS,
        evaluate_every: float = 1.0,
        recover_every: float = RECOVER_EVERY_SECONDS,
    ) -> None:
        self.transactions = transactions
        self.outcomes = outcomes
        self.deliver = deliver
        self.report_timeout = report_timeout
        self.first_retry = first_retry
        self.max_retry = max_retry
        self.evaluate_every = evaluate_every
        self.recover_every = recover_every
        # Transactions this engine has scheduled and not finished: recovery leaves them alone.
        self._active: set[str] = set()
        self._last_recovery = time.monotonic()
        self._associations: dict[str, Any] = {}
        self._due: list[tuple[float, int, str]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._stopping = False
        self._pool = ThreadPoolExecutor(max_workers=DELIVERY_THREADS, thread_name_prefix="commitment-report")
        self._scheduler = threading.Thread(target=self._run, name="commitment-scheduler", daemon=True)
        self._last_prune = 0.0
        # The process's audit trail (audit/trail.py), when one is configured: each request's answer and each report.
        self.audit: Any = None

    # lifecycle

    def start(self) -> None:
        self.transactions.prepare()
        self._recover()
        self._scheduler.start()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._scheduler.is_alive():
            self._scheduler.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _recover(self) -> None:
        """Pending transactions left by a process that stopped: this one reports them unless another does."""
        try:
            for record_id in self.transactions.record_ids():
                transaction = self.transactions.load(record_id)
                if transaction is None or transaction.state != "pending" or record_id in self._active:
                    continue
                if self.transactions.claim(record_id):
                    _log(logging.INFO, "storage commitment recovered", transaction, event="commitment-recovered")
                    self._schedule(record_id, 0.0)
        except Exception as error:  # the SCP serves anyway; what is left is taken over at a later start
            LOG.error(
                "storage commitment recovery failed",
                extra={"fields": {"event": "commitment-recovery-failed", "error": f"{type(error).__name__}: {error}"}},
            )

    # requests (association threads)

    def request(self, assoc: Any, action_information: bytes, implicit: bool, channel: Any = None) -> int:
        """Record an N-ACTION's request (its Action Information as received, in implicit or explicit VR little
        endian); the status to answer it with. Never waits for anything but the disk."""
        requestor = assoc.requestor
        primitive = requestor.primitive
        now = _now()
        try:
            transaction_uid, references = read_request(action_information, implicit)
        except InvalidRequest as error:
            self.audit_answer(assoc, INVALID_ARGUMENT_VALUE, f"request refused: {error}")
            LOG.warning(
                "storage commitment request refused",
                extra={
                    "fields": {
                        "event": "commitment-refused",
                        "peer": f"{requestor.address}:{requestor.port}",
                        "callingAE": str(getattr(primitive, "calling_ae_title", "") or "").strip(),
                        "status": f"0x{INVALID_ARGUMENT_VALUE:04X}",
                        "reason": str(error),
                    }
                },
            )
            return INVALID_ARGUMENT_VALUE
        transaction = Transaction(
            transaction_uid=transaction_uid,
            references=references,
            calling_ae=str(getattr(primitive, "calling_ae_title", "") or "").strip(),
            called_ae=str(getattr(primitive, "called_ae_title", "") or "").strip(),
            peer_address=str(requestor.address),
            peer_port=int(requestor.port),
            received_at=_iso(now),
            deadline=_iso(now + timedelta(seconds=self.report_timeout)),
        )
        classes = [reference.sop_class_uid for reference in references]
        try:
            record_id = self._record(transaction)
        except StorageError as error:
            self.audit_answer(
                assoc, RESOURCE_LIMITATION, "request not recorded: the store failed", transaction_uid, classes
            )
            _log(
                logging.ERROR,
                "storage commitment not recorded",
                transaction,
                event="commitment-not-recorded",
                error=str(error),
            )
            return RESOURCE_LIMITATION
        # Before the report is scheduled: the request's message comes first in the trail.
        self.audit_answer(assoc, SUCCESS, "", transaction_uid, classes)
        if record_id is not None:
            if channel is not None:
                self._associations[record_id] = channel
            self._schedule(record_id, 0.0)
        return SUCCESS

    def audit_answer(
        self, assoc: Any, status: int, detail: str, transaction_uid: str = "", sop_classes: list[str] | None = None
    ) -> None:
        """The N-ACTION's answer, in the audit trail (when there is one)."""
        if self.audit is None:
            return
        requestor = assoc.requestor
        calling = str(getattr(requestor.primitive, "calling_ae_title", "") or "").strip()
        self.audit.commitment_answered(
            calling, str(requestor.address), transaction_uid, sop_classes or [], status, detail
        )

    def _record(self, transaction: Transaction) -> str | None:
        """Write the record; the id to schedule, or None when a retransmission needs nothing new."""
        if self.transactions.create(transaction):
            _log(
                logging.INFO,
                "storage commitment requested",
                transaction,
                event="commitment-requested",
                instances=len(transaction.references),
            )
            return transaction.transaction_uid
        recorded = self.transactions.load(transaction.transaction_uid)
        if recorded is not None and recorded.same_request(transaction):
            # The requester asked again (it missed our answer or the report): one transaction, reported again
            # if it was already reported.
            _log(
                logging.INFO,
                "storage commitment requested again",
                transaction,
                event="commitment-repeated",
                state=recorded.state,
            )
            record_id = recorded.record_id or recorded.transaction_uid
            if recorded.state == "pending" or not self.transactions.claim(record_id):
                return None
            recorded.state, recorded.attempts, recorded.last_error = "pending", 0, ""
            recorded.deadline = transaction.deadline
            recorded.peer_address, recorded.peer_port = transaction.peer_address, transaction.peer_port
            self.transactions.update(recorded)
            return record_id
        # Another request under a Transaction UID in use: its instances are reported failed, the recorded
        # transaction stays as it was.
        duplicate = Transaction(**{**transaction.__dict__})
        duplicate.record_id = f"{transaction.transaction_uid}-duplicate-{uuid.uuid4().hex[:12]}"
        duplicate.duplicate_of = transaction.transaction_uid
        duplicate.committed = []
        duplicate.failed = [
            {**reference.to_json(), "failureReason": DUPLICATE_TRANSACTION_UID} for reference in transaction.references
        ]
        self.transactions.create(duplicate)
        _log(
            logging.WARNING,
            "storage commitment with a Transaction UID in use",
            transaction,
            event="commitment-duplicate",
            instances=len(transaction.references),
        )
        return duplicate.record_id

    # scheduling

    def _schedule(self, record_id: str, delay: float) -> None:
        with self._wake:
            self._active.add(record_id)
            heapq.heappush(self._due, (time.monotonic() + delay, next(self._order), record_id))
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and (not self._due or self._due[0][0] > time.monotonic()):
                    timeout = (self._due[0][0] - time.monotonic()) if self._due else 60.0
                    self._wake.wait(timeout=max(0.0, min(timeout, self.recover_every)))
                    self._prune_now_and_then()
                    if time.monotonic() - self._last_recovery >= self.recover_every:
                        self._last_recovery = time.monotonic()
                        self._wake.release()
                        try:
                            # A process or task that stopped (its lock or lease gone) left these to the others.
                            self._recover()
                        finally:
                            self._wake.acquire()
                if self._stopping:
                    return
                _, _, record_id = heapq.heappop(self._due)
            try:
                self._pool.submit(self._step, record_id)
            except RuntimeError:  # the pool is shut down: stopping
                return

    def _step(self, record_id: str) -> None:
        """Evaluate the transaction, then try to deliver its report once; reschedule as needed."""
        transaction = self.transactions.load(record_id)
        if transaction is None or transaction.state != "pending":
            self._forget(record_id)
            return
        try:
            if transaction.committed is None:
                outcome = self.outcomes.evaluate(transaction)
                if not outcome.final:
                    self.transactions.update(transaction)  # in the stack: renews this task's lease
                    self._schedule(record_id, self.evaluate_every)
                    return
                transaction.committed = [r.to_json() for r, reason in outcome.reasons.items() if reason == 0]
                transaction.failed = [
                    {**r.to_json(), "failureReason": reason} for r, reason in outcome.reasons.items() if reason
                ]
                self.transactions.update(transaction)
            self._attempt(transaction)
        except Exception as error:
            LOG.exception("storage commitment step failed", extra={"fields": {"event": "commitment-error"}})
            transaction.last_error = f"{type(error).__name__}: {error}"
            self._retry_or_give_up(transaction)

    def _attempt(self, transaction: Transaction) -> None:
        record_id = transaction.record_id or transaction.transaction_uid
        transaction.attempts += 1
        try:
            via = self.deliver(transaction, self._associations.get(record_id))
        except Exception as error:
            transaction.last_error = (
                str(error) if isinstance(error, DeliveryError) else f"{type(error).__name__}: {error}"
            )
            _log(
                logging.WARNING,
                "storage commitment report not delivered",
                transaction,
                event="commitment-report-failed",
                attempt=transaction.attempts,
                error=transaction.last_error,
            )
            self._retry_or_give_up(transaction)
            return
        transaction.state, transaction.delivered_via, transaction.last_error = "reported", via, ""
        transaction.finished_at = _iso(_now())
        self.transactions.update(transaction)
        _log(
            logging.INFO,
            "storage commitment reported",
            transaction,
            event="commitment-reported",
            eventType=EVENT_FAILURES_EXIST if transaction.failed else EVENT_ALL_COMMITTED,
            committed=len(transaction.committed or []),
            failed=len(transaction.failed or []),
            deliveredVia=via,
            attempts=transaction.attempts,
            failures=[
                {"sopInstanceUID": f["sopInstanceUID"], "failureReason": f"0x{f['failureReason']:04X}"}
                for f in (transaction.failed or [])[:20]
            ],
        )
        self._audit_report(transaction, via)
        self._forget(record_id)

    def _audit_report(self, transaction: Transaction, via: str) -> None:
        if self.audit is None:
            return
        self.audit.commitment_reported(
            transaction.calling_ae,
            transaction.peer_address,
            transaction.transaction_uid,
            [item["sopClassUID"] for item in transaction.committed or []],
            [(item["sopClassUID"], int(item["failureReason"])) for item in transaction.failed or []],
            via,
        )

    def _retry_or_give_up(self, transaction: Transaction) -> None:
        record_id = transaction.record_id or transaction.transaction_uid
        delay = min(self.max_retry, self.first_retry * 2 ** max(0, transaction.attempts - 1))
        remaining = (_parse_iso(transaction.deadline) - _now()).total_seconds()
        if remaining > 0:
            transaction.state = "pending"
        else:
            transaction.state, transaction.finished_at = "undelivered", _iso(_now())
        try:
            self.transactions.update(transaction)
        except StorageError as error:
            # In the stack: another task took the transaction over (this one's lease ran out); it reports.
            _log(logging.WARNING, "storage commitment left to another", transaction, event="commitment-released",
                 error=str(error))  # fmt: skip
            self._forget(record_id)
            return
        if remaining > 0:
            self._schedule(record_id, min(delay, remaining))
            return
        _log(
            logging.ERROR,
            "storage commitment report given up",
            transaction,
            event="commitment-undelivered",
            attempts=transaction.attempts,
            error=transaction.last_error,
        )
        self._audit_report(transaction, "")
        self._forget(record_id)

    def _forget(self, record_id: str) -> None:
        with self._wake:
            self._active.discard(record_id)
        self._associations.pop(record_id, None)
        self.transactions.release(record_id)

    def _prune_now_and_then(self) -> None:
        if time.monotonic() - self._last_prune < 3600:
            return
        self._last_prune = time.monotonic()
        cutoff = _now() - RETENTION
        for record_id in self.transactions.record_ids():
            with contextlib.suppress(Exception):
                transaction = self.transactions.load(record_id)
                if transaction and transaction.state != "pending" and _parse_iso(transaction.finished_at) < cutoff:
                    self.transactions.remove(record_id)
