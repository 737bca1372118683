"""How the acceptor machine is configured: limits, timers, admission."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from oxidicom_py.dicom import pdu
from oxidicom_py.dicom.negotiation import AcceptancePolicy


@dataclass(frozen=True, slots=True)
class AcceptorConfig:
    ae_title: str
    max_pdu_length: int
    """Advertised maximum PDU length; 0 means unlimited."""
    strict: bool
    """Abort when a P-DATA PDU exceeds ``max_pdu_length`` (otherwise accept it with a warning)."""
    policy: AcceptancePolicy
    artim_timeout: float = 30.0
    allowed_calling_aets: frozenset[str] | None = None
    """Calling AE titles let in (None: any)."""
    allowed_networks: tuple[object, ...] | None = None
    """Client address networks let in (None: any); checked by the transport adapter before any
    byte is read (:func:`oxidicom_py.dicom.acse.address_allowed`)."""
    check_called_aet: bool = False
    """Refuse an A-ASSOCIATE-RQ whose called AE title is not ``ae_title``."""
    idle_timeout: float | None = None
    """Abort an association that sends nothing for this many seconds (None: never)."""
    pdu_timeout: float | None = None
    """Abort when a PDU, once begun, is not complete after this many seconds (a trickling
    sender keeps the idle timer quiet but not this one). None: never."""
    calling_ae_check: Callable[[str], str | None] | None = None
    """Why a calling AE title cannot be served (refused with "calling AE title not recognized"
    and the reason logged), or None; e.g. a title CUBE would not register series under."""


Admission = Callable[[pdu.AssociateRequest, tuple[str, int]], tuple[int, int, int] | None]
"""Returns an A-ASSOCIATE-RJ (result, source, reason) to refuse, or None to go on."""
