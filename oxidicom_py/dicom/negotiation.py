"""Association negotiation for the acceptor: which proposed presentation contexts we accept."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from oxidicom_py.dicom import pdu
from oxidicom_py.dicom.contexts import VERIFICATION, accepted_transfer_syntaxes, sop_class_name, storage_sop_classes
from oxidicom_py.dicom.once import OncePer


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


_REFUSAL_NAMES = {
    pdu.PC_ABSTRACT_SYNTAX_NOT_SUPPORTED: "SOP class not supported",
    pdu.PC_TRANSFER_SYNTAXES_NOT_SUPPORTED: "none of its transfer syntaxes accepted",
}
_refusals_logged = OncePer(3600.0)
"""(calling AE title, SOP class, reason) of the refused-context warnings logged within the hour."""


def warn_refused(
    req: pdu.AssociateRequest, results: list[pdu.ContextResult], log: logging.Logger | logging.LoggerAdapter
) -> None:
    """A warning per refused presentation context, at most once per (AE title, class, reason)
    an hour: a sender whose images we refuse loses them, so the log must say which."""
    proposed = {ctx.context_id: ctx for ctx in req.contexts}
    for result in results:
        if result.result == pdu.PC_ACCEPTANCE:
            continue
        ctx = proposed[result.context_id]
        reason = _REFUSAL_NAMES.get(result.result, "refused")
        if _refusals_logged.first(req.calling_ae, ctx.abstract_syntax, reason):
            log.warning(
                "presentation context refused: %s (%s)",
                sop_class_name(ctx.abstract_syntax),
                reason,
                extra={
                    "calling_ae": req.calling_ae,
                    "sop_class": ctx.abstract_syntax,
                    "transfer_syntaxes": list(ctx.transfer_syntaxes),
                },
            )
