"""Which presentation contexts the SCP accepts: any storage SOP class, in the transfer syntaxes AHI imports, the
sender's preferred one first.

AWS HealthImaging imports any SOP class UID, private and retired ones included ("Supported SOP classes" in its
developer guide). pynetdicom negotiates only the abstract syntaxes the AE lists, and its own "unrestricted storage"
switch (``_config.UNRESTRICTED_STORAGE_SERVICE``) accepts the first transfer syntax a peer proposes, whatever it
is. So the AE lists every storage class pynetdicom knows, and for each association that proposes others this module
adds them before negotiation (EVT_REQUESTED) with the same transfer syntaxes: negotiation then checks them as usual.

A proposed abstract syntax counts as storage unless pynetdicom knows it as another service (Query/Retrieve,
Worklist, Print...): those are declined, because this SCP serves only C-STORE and C-ECHO.
"""

from __future__ import annotations

import logging
from typing import Any

from dicom_store_contract import uids
from pynetdicom.presentation import PresentationContext
from pynetdicom.service_class import ServiceClass, StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class

from .transfer_syntaxes import AHI_IMPORTABLE

LOG = logging.getLogger("dicom_store_scp.contexts")


def storage_like(uid: str) -> bool:
    """A storage SOP class pynetdicom knows, or one it does not know at all (private, retired, newer)."""
    # The UID's form only; its length is checked when a C-STORE arrives (handlers.py).
    if not uids.has_uid_form(uid):
        return False
    return uid_to_service_class(uid) in (StorageServiceClass, ServiceClass)


def add_proposed_storage_contexts(event: Any) -> None:
    """EVT_REQUESTED, when every storage SOP class is accepted: support the storage classes the AE does not list.

    ``assoc.acceptor.supported_contexts`` is this association's own copy (server.QuickRequestHandler), so what one
    peer proposes never reaches another's association.
    """
    assoc = event.assoc
    primitive = assoc.requestor.primitive
    if primitive is None or assoc.is_rejected or assoc.is_aborted:
        return
    # The acceptor's list itself, not a copy: negotiation reads it next.
    supported = assoc.acceptor.supported_contexts
    listed = {str(context.abstract_syntax) for context in supported}
    added = []
    for proposed in primitive.presentation_context_definition_list:
        uid = str(proposed.abstract_syntax or "")
        if uid in listed or not storage_like(uid):
            continue
        context = PresentationContext()
        context.abstract_syntax = uid
        context.transfer_syntax = list(AHI_IMPORTABLE)
        supported.append(context)
        listed.add(uid)
        added.append(uid)
    if added:
        LOG.info(
            "storage SOP classes pynetdicom does not list are negotiated",
            extra={"fields": {"event": "unlisted-sop-classes", "sopClassUIDs": added}},
        )


def prefer_proposed_syntaxes(event: Any) -> None:
    """EVT_REQUESTED: of the transfer syntaxes AHI imports, accept the one the sender proposed first.

    pynetdicom accepts the first syntax of the acceptor's own list that the proposal holds, so a sender offering
    Explicit VR Little Endian before Implicit would get Implicit (this SCP's table lists it first) and the VRs of its
    private elements would be lost in what is stored. The sender knows what its data is in: this association's copy of
    each proposed SOP class's list is put in the sender's order first (proposals of one SOP class in several contexts
    in the order they come), the rest after.
    """
    assoc = event.assoc
    primitive = assoc.requestor.primitive
    if primitive is None or assoc.is_rejected or assoc.is_aborted:
        return
    preferred: dict[str, list[str]] = {}
    for proposed in primitive.presentation_context_definition_list:
        order = preferred.setdefault(str(proposed.abstract_syntax or ""), [])
        order += [str(syntax) for syntax in proposed.transfer_syntax if str(syntax) not in order]
    for context in assoc.acceptor.supported_contexts:
        wanted = preferred.get(str(context.abstract_syntax))
        if not wanted:
            continue
        ours = [str(syntax) for syntax in context.transfer_syntax]
        first_choice = next((syntax for syntax in wanted if syntax in ours), None)
        if first_choice is None or next(syntax for syntax in ours if syntax in wanted) == first_choice:
            continue  # pynetdicom's pick is the sender's first already (the common case: nothing to do)
        theirs = [syntax for syntax in wanted if syntax in ours]
        context.transfer_syntax = theirs + [syntax for syntax in ours if syntax not in theirs]
