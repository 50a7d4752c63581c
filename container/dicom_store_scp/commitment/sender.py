"""Delivery over DIMSE: ``ReportSender`` sends a transaction's N-EVENT-REPORT on the requesting association (through its
receive loop, engine.py) or, once that has ended, on a new association (pynetdicom as the association requester)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from io import BytesIO
from typing import Any

from pydicom.dataset import Dataset

from .information import report
from .model import (
    EVENT_ALL_COMMITTED,
    EVENT_FAILURES_EXIST,
    STORAGE_COMMITMENT_PUSH_MODEL,
    STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE,
    SUCCESS,
    Transaction,
    _log,
)
from .scheduler import DeliveryError

# How long a report on the requesting association waits for its answer. The association goes on meanwhile (requests
# that cross the report are served); a release requested meanwhile is answered once the report is answered or this
# wait is over. After it, the report goes on a new association.
SAME_ASSOCIATION_WAIT_SECONDS = 10.0


class ReportSender:
    """Sends a transaction's N-EVENT-REPORT: on the requesting association while it is open, else on a new one.

    A new association proposes the Storage Commitment Push Model with SCP/SCU role selection, this side as SCP
    (PS3.4 J.3.3: the report may come on another association, which the SCP then requests).
    """

    def __init__(
        self,
        ae_title: str,
        peers: Iterable[tuple[str, str, int]],
        acse_timeout: float,
        dimse_timeout: float,
        network_timeout: float,
    ) -> None:
        self.ae_title = ae_title
        self.peers = {title: (host, port) for title, host, port in peers}
        self.acse_timeout = acse_timeout
        self.dimse_timeout = dimse_timeout
        self.network_timeout = network_timeout

    def __call__(self, transaction: Transaction, channel: Any) -> str:
        """``channel``: the requesting association's data phase (engine.DataPhase) while this process serves it."""
        event_type = EVENT_FAILURES_EXIST if transaction.failed else EVENT_ALL_COMMITTED
        if channel is not None:
            status, problem = channel.send_event_report(
                event_type,
                lambda implicit: report(transaction, implicit)[1],
                STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE,
                SAME_ASSOCIATION_WAIT_SECONDS,
            )
            if status == SUCCESS:
                return "same-association"
            _log(
                logging.INFO,
                "storage commitment report not taken on its association",
                transaction,
                event="commitment-same-association-failed",
                error=problem or f"N-EVENT-REPORT-RSP status 0x{status:04X}",
            )
        address = self.peers.get(transaction.calling_ae)
        if address is None:
            raise DeliveryError(
                "the requesting association has closed and COMMITMENT_PEERS has no address for "
                f"{transaction.calling_ae!r}"
            )
        return self._send_on_new_association(transaction, address, event_type)

    def _send_on_new_association(self, transaction: Transaction, address: tuple[str, int], event_type: int) -> str:
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
        from pynetdicom import AE, build_role
        from pynetdicom.dsutils import decode

        ae = AE(ae_title=self.ae_title)
        ae.connection_timeout = min(10.0, self.acse_timeout)
        ae.acse_timeout = self.acse_timeout
        ae.dimse_timeout = self.dimse_timeout
        ae.network_timeout = self.network_timeout
        ae.add_requested_context(STORAGE_COMMITMENT_PUSH_MODEL, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        role = build_role(STORAGE_COMMITMENT_PUSH_MODEL, scp_role=True)
        host, port = address
        assoc = ae.associate(host, port, ae_title=transaction.calling_ae, ext_neg=[role])
        if not assoc.is_established:
            raise DeliveryError(f"no association with {transaction.calling_ae} at {host}:{port}")
        try:
            accepted = [
                cx for cx in assoc.accepted_contexts if str(cx.abstract_syntax) == STORAGE_COMMITMENT_PUSH_MODEL
            ]
            if not any(context.as_scp for context in accepted):
                # PS3.4 J.3.3: on an association this side requests, the report needs the SCP role, which the peer
                # grants by SCP/SCU Role Selection; without it this side may act only as the SCU.
                raise DeliveryError(
                    f"{transaction.calling_ae} at {host}:{port} did not accept this SCP's role for Storage "
                    "Commitment (SCP/SCU Role Selection)"
                )
            implicit = str(accepted[0].transfer_syntax[0]) == ImplicitVRLittleEndian
            # Encoded here in the accepted syntax and read back lazily: pynetdicom writes the elements' bytes as they
            # are, without building a Dataset per reference (information.py says why that matters).
            information = decode(BytesIO(report(transaction, implicit)[1]), implicit, True)
            self._send(assoc, event_type, information)
        finally:
            if assoc.is_established:
                assoc.release()
        return "new-association"

    @staticmethod
    def _send(assoc: Any, event_type: int, information: Dataset) -> None:
        try:
            status, _reply = assoc.send_n_event_report(
                information, event_type, STORAGE_COMMITMENT_PUSH_MODEL, STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE
            )
        except (RuntimeError, ValueError) as error:
            raise DeliveryError(f"N-EVENT-REPORT not sent: {error}") from None
        code = getattr(status, "Status", None)
        if code is None:
            raise DeliveryError("no N-EVENT-REPORT-RSP (timed out, aborted or invalid)")
        if code != SUCCESS:
            raise DeliveryError(f"N-EVENT-REPORT-RSP status 0x{code:04X}")
