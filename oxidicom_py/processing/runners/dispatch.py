"""Which runner a rule's ``run`` names: ``command``, ``container`` or ``http``."""

from __future__ import annotations

import importlib

from oxidicom_py.processing.runners.base import RunRequest, RunResult

KINDS = ("command", "container", "http")


def kind_of(spec: dict[str, object]) -> str:
    for kind in KINDS:
        if kind in spec:
            return kind
    raise ValueError(f"run names no runner (one of {', '.join(KINDS)})")


async def run(request: RunRequest) -> RunResult:
    kind = kind_of(dict(request.spec))
    module = importlib.import_module(f"oxidicom_py.processing.runners.{kind}")
    result: RunResult = await module.run(request)
    return result
