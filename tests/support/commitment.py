"""A Storage Commitment Push Model requester (SCU) for tests: pynetdicom, as DCMTK has no storage commitment SCU.
It asks on one association and takes N-EVENT-REPORTs on it or, once that is gone, on its own listening port."""

from __future__ import annotations

import queue
from dataclasses import dataclass
from typing import Any

from dicom_store_scp.commitment import model
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt

from support.scp import RunningScp, free_port

PUSH_MODEL = model.STORAGE_COMMITMENT_PUSH_MODEL
WELL_KNOWN_INSTANCE = model.STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE
REQUESTER = "REQUESTER"
SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]


@dataclass
class Report:
    event_type: int
    information: Dataset
    on_requesting_association: bool
    called_ae: str

    @property
    def committed(self) -> set[tuple[str, str]]:
        items = self.information.get("ReferencedSOPSequence") or []
        return {(str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID)) for i in items}

    @property
    def failed(self) -> dict[str, int]:
        items = self.information.get("FailedSOPSequence") or []
        return {str(i.ReferencedSOPInstanceUID): int(i.FailureReason) for i in items}


class Requester:
    """A storage commitment SCU: asks on one association, takes reports on it or on its own listening port."""

    def __init__(self, title: str = REQUESTER) -> None:
        self.title = title
        self.reports: queue.Queue[Report] = queue.Queue()
        self.port = free_port()
        self.server: Any = None

    def _take(self, event: Any) -> tuple[int, None]:
        self.reports.put(
            Report(
                event.event_type,
                event.event_information,
                event.assoc.is_requestor,
                str(event.assoc.acceptor.ae_title).strip(),
            )
        )
        return 0x0000, None

    def listen(self, grant_role: bool = True) -> None:
        """Accept the SCP's association for a report (it proposes the SCP role for the SOP class; granted unless
        ``grant_role`` is False, when this side answers no role selection at all)."""
        ae = AE(ae_title=self.title)
        roles = {"scu_role": False, "scp_role": True} if grant_role else {}
        ae.add_supported_context(PUSH_MODEL, SYNTAXES, **roles)
        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, self._take)]
        )

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()

    def associate(self, scp: RunningScp, take_reports: bool = True, *contexts: str) -> Any:
        ae = AE(ae_title=self.title)
        ae.add_requested_context(PUSH_MODEL, SYNTAXES)
        for sop_class in contexts:
            ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
        handlers = [(evt.EVT_N_EVENT_REPORT, self._take)] if take_reports else []
        assoc = ae.associate("127.0.0.1", scp.port, ae_title="STORESCP", evt_handlers=handlers)
        assert assoc.is_established
        return assoc

    def request(self, assoc: Any, transaction_uid: str, references: list[tuple[str, str]]) -> int:
        information = Dataset()
        information.TransactionUID = transaction_uid
        information.ReferencedSOPSequence = []
        for sop_class, sop_instance in references:
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = sop_instance
            information.ReferencedSOPSequence.append(item)
        status, _reply = assoc.send_n_action(information, 1, PUSH_MODEL, WELL_KNOWN_INSTANCE)
        return int(status.Status)

    def next_report(self, timeout: float = 20) -> Report:
        return self.reports.get(timeout=timeout)
