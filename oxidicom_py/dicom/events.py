"""What the acceptor machine tells its adapter: one event per thing that happened, in order."""

from __future__ import annotations

from dataclasses import dataclass

from oxidicom_py.dicom.dimse import Command
from oxidicom_py.dicom.negotiation import AcceptedContext


@dataclass(slots=True)
class AssociationInfo:
    """An established association, as the rest of the pipeline sees it."""

    ulid: str
    calling_ae: str
    called_ae: str
    peer: tuple[str, int]
    contexts: dict[int, AcceptedContext]
    peer_max_pdu: int = 0
    peer_implementation: str = ""
    tls_subject: str = ""
    """The client certificate's subject over TLS (empty: no TLS, or no certificate)."""


@dataclass(frozen=True, slots=True)
class StoreResult:
    """The status to answer a C-STORE with (PS3.4 B.2.3) and its ErrorComment."""

    status: int
    comment: str = ""


@dataclass(slots=True)
class AssociationEstablished:
    """A-ASSOCIATE-AC sent: the association is in Sta6."""

    info: AssociationInfo


@dataclass(slots=True)
class AssociationRejected:
    """An association refused (A-ASSOCIATE-RJ) or a connection dropped before one; ``reason``
    is the label of ``oxidicom_associations_rejected_total``; ``permanent``: an A-ASSOCIATE-RJ
    the sender must not simply retry (its AE titles; not a local limit)."""

    reason: str
    calling_ae: str = ""
    called_ae: str = ""
    permanent: bool = False
    detail: str = ""


@dataclass(slots=True)
class InstanceBegun:
    """A C-STORE-RQ arrived; its dataset follows as :class:`InstanceData`."""

    command: Command
    context: AcceptedContext


@dataclass(slots=True)
class InstanceData:
    """The next fragment of the dataset (valid only until the next call into the machine)."""

    data: memoryview


@dataclass(slots=True)
class InstanceComplete:
    """The dataset is complete: give the machine its result (``store_result``)."""


@dataclass(slots=True)
class InstanceAborted:
    """The instance under way will not complete (release or abort mid-instance, connection lost)."""

    reason: str


@dataclass(slots=True)
class CloseConnection:
    """Close the transport connection (after an A-ASSOCIATE-RJ, A-RELEASE-RP or A-ABORT)."""


@dataclass(slots=True)
class ConnectionClosed:
    """The established association is over; ``outcome`` says how (``released``, ``aborted by
    peer``, ``aborted by us: ...``, ``connection lost ...``)."""

    outcome: str


Event = (
    AssociationEstablished
    | AssociationRejected
    | InstanceBegun
    | InstanceData
    | InstanceComplete
    | InstanceAborted
    | CloseConnection
    | ConnectionClosed
)
