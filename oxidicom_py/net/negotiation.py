"""Association negotiation for the acceptor: which proposed presentation contexts we accept."""

from __future__ import annotations

from dataclasses import dataclass

from oxidicom_py.net import pdu
from oxidicom_py.net.contexts import VERIFICATION, accepted_transfer_syntaxes, storage_sop_classes


@dataclass(frozen=True, slots=True)
class AcceptancePolicy:
    promiscuous: bool = False
    """Accept any abstract syntax, not only the known storage classes."""
    uncompressed_only: bool = False


@dataclass(frozen=True, slots=True)
class AcceptedContext:
    context_id: int
    abstract_syntax: str
    transfer_syntax: str


def negotiate(
    req: pdu.AssociateRequest, policy: AcceptancePolicy
) -> tuple[list[pdu.ContextResult], dict[int, AcceptedContext]]:
    """Results for every proposed context (in proposal order) and the accepted ones by id.

    The transfer syntax chosen is the first one, in the requestor's order, that we accept.
    """
    syntaxes = accepted_transfer_syntaxes(policy.uncompressed_only)
    known = storage_sop_classes()
    results: list[pdu.ContextResult] = []
    accepted: dict[int, AcceptedContext] = {}
    for ctx in req.contexts:
        abstract = ctx.abstract_syntax
        if not abstract or not (abstract == VERIFICATION or abstract in known or policy.promiscuous):
            results.append(
                pdu.ContextResult(ctx.context_id, pdu.PC_ABSTRACT_SYNTAX_NOT_SUPPORTED, pdu_ts_placeholder())
            )
            continue
        chosen = next((ts for ts in ctx.transfer_syntaxes if ts in syntaxes), None)
        if chosen is None:
            results.append(
                pdu.ContextResult(ctx.context_id, pdu.PC_TRANSFER_SYNTAXES_NOT_SUPPORTED, pdu_ts_placeholder())
            )
            continue
        results.append(pdu.ContextResult(ctx.context_id, pdu.PC_ACCEPTANCE, chosen))
        accepted[ctx.context_id] = AcceptedContext(ctx.context_id, abstract, chosen)
    return results, accepted


def pdu_ts_placeholder() -> str:
    """Transfer syntax sub-item of a rejected context: its value is not significant (PS3.8 9.3.3.2)."""
    return "1.2.840.10008.1.2"
