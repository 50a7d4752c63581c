"""Event handlers: access control, C-STORE validation and storage, association bookkeeping.

No socket code here (see server.py). Dependencies arrive through the bind arguments. A received data set is
never decoded in full: pynetdicom streams it to a spool file, we read just the header elements needed to
validate and name it, and the file's bytes are stored exactly as received.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dicom_store_contract import limits
from dicom_store_contract.manifest import EndReason, Instance
from pydicom.filereader import read_partial
from pydicom.tag import BaseTag, Tag

from . import statuses, validation
from .batches import AssociationClosing, Sessions
from .storage import StorageError, file_sha256

LOG = logging.getLogger("dicom_store_scp.handlers")

_SOP_CLASS_UID = Tag(0x0008, 0x0016)
_SOP_INSTANCE_UID = Tag(0x0008, 0x0018)
_STUDY_DATE = Tag(0x0008, 0x0020)
_STUDY_INSTANCE_UID = Tag(0x0020, 0x000D)
_SERIES_INSTANCE_UID = Tag(0x0020, 0x000E)
_HEADER_TAGS: list[BaseTag | int] = sorted(
    {_SOP_CLASS_UID, _SOP_INSTANCE_UID, _STUDY_DATE, _STUDY_INSTANCE_UID, _SERIES_INSTANCE_UID, *validation.TAGS}
)
# The header is read up to the last element any check needs, never into the pixel data.
_LAST_HEADER_TAG = max(_HEADER_TAGS)

# PS3.5 9.1: digits in dot-separated components, at most 64 characters. Leading zeros are tolerated (they
# are common in the wild and harmless here); empty components are not, which also keeps keys path-safe.
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_UID_LENGTH = limits.DICOM_UID_LENGTH.whole

# A-ASSOCIATE-RJ (PS3.8 7.1.1.9): result, source, reason.
_REJECTED_PERMANENT = 0x01
_REJECTED_TRANSIENT = 0x02
_SERVICE_USER = 0x01
_SERVICE_PROVIDER_PRESENTATION = 0x03
_NO_REASON_GIVEN = 0x01
_LOCAL_LIMIT_EXCEEDED = 0x02

_REJECT_REASONS = {
    (0x01, 0x01): "no reason given",
    (0x01, 0x02): "application context name not supported",
    (0x01, 0x03): "calling AE title not recognised",
    (0x01, 0x07): "called AE title not recognised",
    (0x02, 0x01): "no reason given",
    (0x02, 0x02): "protocol version not supported",
    (0x03, 0x01): "temporary congestion",
    (0x03, 0x02): "local limit exceeded",
}


def _peer(assoc: Any) -> dict[str, Any]:
    requestor = assoc.requestor
    primitive = requestor.primitive
    return {
        "peer": f"{requestor.address}:{requestor.port}",
        "callingAE": str(getattr(primitive, "calling_ae_title", "") or "").strip(),
        "calledAE": str(getattr(primitive, "called_ae_title", "") or "").strip(),
    }


def _stop_after_header(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag > _LAST_HEADER_TAG


def _is_uid(value: str) -> bool:
    return 0 < len(value) <= _UID_LENGTH and bool(_UID.match(value))


def _uid_fault(value: str) -> str:
    if not value:
        return "data set has none"
    if len(value) > _UID_LENGTH and _UID.match(value):
        # AHI would import up to 256 characters, but DICOM allows 64: no other DICOM node could take it from AHI.
        return f"data set has {len(value)} characters, DICOM allows {_UID_LENGTH} (AHI {limits.AHI_UID_LENGTH.whole})"
    return f"data set has {value}"


# -- connection and association events --------------------------------------------------------------------------


def handle_connection_open(event: Any) -> None:
    """EVT_CONN_OPEN: name the connection's threads after the peer, so every log line they emit says who."""
    host, port = event.address[:2]
    # pynetdicom finds its acceptor threads by the "AcceptorThread" in their names: keep it.
    event.assoc.name = f"AcceptorThread peer {host}:{port}"
    event.assoc.dul.name = f"DUL peer {host}:{port}"


def handle_connection_closed(event: Any) -> None:
    """EVT_CONN_CLOSE: a peer that closed before asking for an association (a load balancer's TCP health check).

    pynetdicom's association thread would wait for the A-ASSOCIATE-RQ until the ACSE timeout, holding a thread
    and an association slot for every health check. An empty item on its queue is what that wait returns on a
    timeout, so the thread ends now, quietly.
    """
    assoc = event.assoc
    if assoc.requestor.primitive is None:
        assoc.dul.to_user_queue.put(None)


def handle_requested(
    event: Any,
    peer_networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network],
    over_budget: Callable[[], bool] | None,
) -> None:
    """EVT_REQUESTED: checks pynetdicom cannot make (AE titles and its per-process limit it checks itself).

    - peers outside ``PEER_CIDRS``: rejected permanent, service user, no reason given;
    - with several worker processes, the task-wide ``MAXIMUM_ASSOCIATIONS``: rejected transient, service
      provider (presentation), local limit exceeded, as pynetdicom answers for its own limit.
    """
    assoc = event.assoc
    if peer_networks and not _peer_allowed(assoc.requestor.address, peer_networks):
        _reject(assoc, (_REJECTED_PERMANENT, _SERVICE_USER, _NO_REASON_GIVEN), "peer not in PEER_CIDRS")
    elif over_budget is not None and over_budget():
        _reject(
            assoc, (_REJECTED_TRANSIENT, _SERVICE_PROVIDER_PRESENTATION, _LOCAL_LIMIT_EXCEEDED), "local limit exceeded"
        )


def _peer_allowed(address: str, peer_networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        peer = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(peer in network for network in peer_networks)


def _reject(assoc: Any, result_source_reason: tuple[int, int, int], reason: str) -> None:
    assoc.acse.send_reject(*result_source_reason)
    LOG.warning(
        "association rejected", extra={"fields": {"event": "association-rejected", **_peer(assoc), "reason": reason}}
    )
    assoc.kill()


def handle_rejected(event: Any) -> None:
    """EVT_REJECTED: log pynetdicom's own rejections (AE titles, association limit) with their reason."""
    assoc = event.assoc
    primitive = assoc.acceptor.primitive
    reason = _REJECT_REASONS.get((primitive.result_source, primitive.diagnostic), "unknown")
    LOG.warning(
        "association rejected",
        extra={
            "fields": {
                "event": "association-rejected",
                **_peer(assoc),
                "reason": reason,
                "result": primitive.result,
                "source": primitive.result_source,
                "diagnostic": primitive.diagnostic,
            }
        },
    )


def handle_accepted(event: Any) -> None:
    """EVT_ACCEPTED: log the presentation contexts we declined, so a sender's misconfiguration is visible."""
    declined = [
        {
            "abstractSyntax": str(context.abstract_syntax),
            "transferSyntaxes": [str(ts) for ts in context.transfer_syntax],
            "result": context.result,
        }
        for context in event.assoc.rejected_contexts
    ]
    if declined:
        LOG.info(
            "presentation contexts declined",
            extra={"fields": {"event": "contexts-declined", **_peer(event.assoc), "declined": declined}},
        )


def handle_established(event: Any, sessions: Sessions) -> None:
    sessions.open(event.assoc)


def handle_released(event: Any, sessions: Sessions) -> None:
    sessions.close(event.assoc, EndReason.RELEASED)


def handle_aborted(event: Any, sessions: Sessions) -> None:
    sessions.close(event.assoc, EndReason.ABORTED)


# -- C-STORE -----------------------------------------------------------------------------------------------------------


def handle_store(event: Any, sessions: Sessions) -> int:
    """EVT_C_STORE: validate, store durably, and only then answer success."""
    request = event.request
    source = Path(event.dataset_path)
    try:
        session = sessions.get(event.assoc)
    except AssociationClosing:
        return _fail(event, None, statuses.OUT_OF_RESOURCES_CLOSING, "association is not open")

    try:
        with source.open("rb") as handle:
            header = read_partial(handle, stop_when=_stop_after_header, specific_tags=_HEADER_TAGS)
    except Exception as error:  # pydicom raises many types for malformed input
        return _fail(event, sessions, statuses.CANNOT_PARSE_DATASET, f"{type(error).__name__}: {error}")

    status, detail = _validate(request, header)
    if status != statuses.SUCCESS:
        return _fail(event, sessions, status, detail)
    status, detail, fields = validation.check(header)
    if status != statuses.SUCCESS:
        return _fail(event, sessions, status, detail, fields)
    limited = validation.limited_support(header)
    if limited:
        LOG.warning(
            "stored; AWS HealthImaging documents limited support for it",
            extra={
                "fields": {
                    "event": "ahi-limited-support",
                    **_peer(event.assoc),
                    "sopInstanceUID": str(request.AffectedSOPInstanceUID),
                    "content": limited,
                    "source": validation.DICOM_SUPPORT_PAGE,
                }
            },
        )

    instance = Instance(
        sop_class_uid=str(header[_SOP_CLASS_UID].value),
        sop_instance_uid=str(header[_SOP_INSTANCE_UID].value),
        study_instance_uid=str(header[_STUDY_INSTANCE_UID].value),
        series_instance_uid=str(header[_SERIES_INSTANCE_UID].value),
        study_date=str(header[_STUDY_DATE].value or "") if _STUDY_DATE in header else "",
        transfer_syntax_uid=str(event.context.transfer_syntax),
        size=source.stat().st_size,
        sha256=file_sha256(source),
    )
    try:
        sessions.store(session, source, instance)
    except StorageError as error:
        return _fail(event, sessions, statuses.OUT_OF_RESOURCES_STORAGE, str(error))
    except AssociationClosing as error:
        return _fail(event, sessions, statuses.OUT_OF_RESOURCES_CLOSING, str(error))
    return statuses.SUCCESS


def _element_text(header: Any, tag: BaseTag) -> str:
    if tag not in header:
        return ""
    value = header[tag].value
    return str(value).strip() if value is not None else ""


def _validate(request: Any, header: Any) -> tuple[int, str]:
    sop_class = _element_text(header, _SOP_CLASS_UID)
    if sop_class != str(request.AffectedSOPClassUID):
        return statuses.SOP_CLASS_MISMATCH, f"data set has {sop_class or 'none'}"
    sop_instance = _element_text(header, _SOP_INSTANCE_UID)
    if not _is_uid(sop_instance):
        return statuses.BAD_SOP_INSTANCE_UID, _uid_fault(sop_instance)
    if sop_instance != str(request.AffectedSOPInstanceUID):
        return statuses.SOP_INSTANCE_MISMATCH, f"data set has {sop_instance}"
    study = _element_text(header, _STUDY_INSTANCE_UID)
    if not _is_uid(study):
        return statuses.BAD_STUDY_INSTANCE_UID, _uid_fault(study)
    series = _element_text(header, _SERIES_INSTANCE_UID)
    if not _is_uid(series):
        return statuses.BAD_SERIES_INSTANCE_UID, _uid_fault(series)
    return statuses.SUCCESS, ""


def _fail(event: Any, sessions: Sessions | None, status: int, detail: str, fields: dict[str, Any] | None = None) -> int:
    if sessions is not None:
        with contextlib.suppress(AssociationClosing):
            sessions.record_failure(sessions.get(event.assoc))
    LOG.warning(
        "C-STORE failed",
        extra={
            "fields": {
                "event": "c-store-failed",
                **_peer(event.assoc),
                "status": f"0x{status:04X}",
                "reason": statuses.REASONS[status],
                "detail": detail,
                "sopInstanceUID": str(event.request.AffectedSOPInstanceUID),
                "sopClassUID": str(event.request.AffectedSOPClassUID),
                **(fields or {}),
            }
        },
    )
    return status
