"""Association admission (PS3.8 7.1, ACSE): which A-ASSOCIATE-RQ we refuse, and why."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from oxidicom_py.dicom import pdu
from oxidicom_py.dicom.contexts import APPLICATION_CONTEXT

Refusal = tuple[int, int, int]
"""An A-ASSOCIATE-RJ: (result, source, reason)."""

REJECTION_LABELS = {
    (pdu.RJ_SOURCE_ACSE, pdu.RJ_ACSE_PROTOCOL_VERSION_NOT_SUPPORTED): "protocol_version",
    (pdu.RJ_SOURCE_USER, pdu.RJ_USER_APP_CONTEXT_NOT_SUPPORTED): "application_context",
    (pdu.RJ_SOURCE_USER, pdu.RJ_USER_CALLING_AE_NOT_RECOGNIZED): "calling_ae_not_allowed",
    (pdu.RJ_SOURCE_USER, pdu.RJ_USER_CALLED_AE_NOT_RECOGNIZED): "called_ae_not_recognized",
    (pdu.RJ_SOURCE_PRESENTATION, pdu.RJ_PRESENTATION_LOCAL_LIMIT_EXCEEDED): "local_limit",
}
"""Label values of ``oxidicom_associations_rejected_total`` for each A-ASSOCIATE-RJ we send,
by (source, reason)."""

LOCAL_LIMIT_EXCEEDED: Refusal = (pdu.RJ_TRANSIENT, pdu.RJ_SOURCE_PRESENTATION, pdu.RJ_PRESENTATION_LOCAL_LIMIT_EXCEEDED)
"""Transient: the sender should retry later (association limit, registration backlog)."""


def refusal(
    req: pdu.AssociateRequest, ae_title: str, allowed_calling_aets: frozenset[str] | None, check_called_aet: bool
) -> Refusal | None:
    """The A-ASSOCIATE-RJ for ``req``, or None when the request itself is acceptable."""
    if not req.protocol_version & 0x0001:
        return (pdu.RJ_PERMANENT, pdu.RJ_SOURCE_ACSE, pdu.RJ_ACSE_PROTOCOL_VERSION_NOT_SUPPORTED)
    if req.application_context != APPLICATION_CONTEXT:
        return (pdu.RJ_PERMANENT, pdu.RJ_SOURCE_USER, pdu.RJ_USER_APP_CONTEXT_NOT_SUPPORTED)
    if allowed_calling_aets is not None and req.calling_ae not in allowed_calling_aets:
        return (pdu.RJ_PERMANENT, pdu.RJ_SOURCE_USER, pdu.RJ_USER_CALLING_AE_NOT_RECOGNIZED)
    if check_called_aet and req.called_ae != ae_title:
        return (pdu.RJ_PERMANENT, pdu.RJ_SOURCE_USER, pdu.RJ_USER_CALLED_AE_NOT_RECOGNIZED)
    return None


def rejection_label(rj: Refusal) -> str:
    return REJECTION_LABELS.get(rj[1:], "other")


def address_allowed(address: str, networks: Iterable[object] | None) -> bool:
    """Whether a client address is in one of ``networks`` (None: every address is)."""
    if networks is None:
        return True
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)  # type: ignore[operator]
