"""C-STORE of files to one destination (pynetdicom as the requestor), blocking: run it in a thread.

Presentation contexts: one per SOP class, offering each file's own transfer syntax and the
uncompressed ones (pynetdicom re-encodes between those). Every store is bounded by
``dimse_timeout``: a response that never comes (a lost one, a hung peer) aborts the
association and leaves the file unacknowledged, to be sent again on the next attempt.
``acknowledged(uid, status)`` is called as each response arrives, so what a destination
acknowledged is recorded before anything else is sent.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from oxidicom_py.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

log = logging.getLogger("oxidicom_py.delivery")

MAX_CONTEXTS = 128
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


@dataclass(frozen=True, slots=True)
class Target:
    ae_title: str
    host: str
    port: int
    calling_ae: str
    timeout: float = 30.0
    tls: ssl.SSLContext | None = None
    """DICOM TLS (made by :func:`client_context`); None: plain TCP."""


def _decompressed(ds: pydicom.Dataset) -> pydicom.Dataset | None:
    """``ds`` in Explicit VR Little Endian if it is compressed and pydicom can decode it, else None."""
    if not ds.file_meta.TransferSyntaxUID.is_compressed:
        return None
    try:
        ds.decompress(generate_instance_uid=False)
    except Exception as e:  # no decoder for that syntax, or corrupt pixel data
        log.warning("cannot decompress for a destination that refused its syntax: %s", e)
        return None
    return ds


def client_context(spec: Mapping[str, Any]) -> ssl.SSLContext:
    """The TLS context of a destination's ``tls`` settings: TLS 1.2+, the server verified against
    ``ca`` (default: the system's CAs) and, unless ``check_hostname: false``, its name; our
    client certificate from ``cert``/``key`` when given."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=spec.get("ca"))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = bool(spec.get("check_hostname", True))
    if spec.get("cert"):
        ctx.load_cert_chain(spec["cert"], spec.get("key"))
    return ctx


@dataclass(frozen=True, slots=True)
class Outgoing:
    sop_instance_uid: str
    sop_class_uid: str
    path: Path


@dataclass(slots=True)
class Outcome:
    sent: int = 0
    failed: dict[str, tuple[int | None, str]] | None = None
    """SOP Instance UID -> (status, why) of the files not acknowledged with success."""
    error: str | None = None
    """Why the association failed as a whole (refused, unreachable, aborted)."""


def _is_success(status: int) -> bool:
    return status == 0x0000 or status in (0x0001, 0x0107, 0x0116) or 0xB000 <= status <= 0xBFFF


def send(
    target: Target,
    files: Sequence[Outgoing],
    acknowledged: Callable[[str, int], None],
    stop: threading.Event | None = None,
) -> Outcome:
    """Send ``files`` over one association (several if they need more than 128 contexts);
    ``stop`` set: no further C-STORE (the one under way finishes), the association is released."""
    outcome = Outcome(failed={})
    assert outcome.failed is not None
    by_class: dict[str, list[Outgoing]] = {}
    for f in files:
        by_class.setdefault(f.sop_class_uid, []).append(f)
    classes = sorted(by_class)
    for start in range(0, len(classes), MAX_CONTEXTS):
        chunk = classes[start : start + MAX_CONTEXTS]
        _send_chunk(target, [f for c in chunk for f in by_class[c]], chunk, acknowledged, outcome, stop)
        if outcome.error:
            break
    return outcome


def _send_chunk(
    target: Target,
    files: Sequence[Outgoing],
    classes: Sequence[str],
    acknowledged: Callable[[str, int], None],
    outcome: Outcome,
    stop: threading.Event | None,
) -> None:
    from pynetdicom import AE

    assert outcome.failed is not None
    datasets = {}
    syntaxes: dict[str, set[str]] = {c: set(UNCOMPRESSED) for c in classes}
    for f in files:
        try:
            ds = pydicom.dcmread(f.path)
        except (OSError, pydicom.errors.InvalidDicomError) as e:
            outcome.failed[f.sop_instance_uid] = (None, f"cannot read {f.path.name}: {e}")
            continue
        datasets[f.sop_instance_uid] = ds
        syntaxes[f.sop_class_uid].add(str(ds.file_meta.TransferSyntaxUID))
    ae = AE(ae_title=target.calling_ae)
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    ae.acse_timeout = target.timeout
    ae.dimse_timeout = target.timeout
    ae.network_timeout = target.timeout
    ae.connection_timeout = min(target.timeout, 10.0)
    for c in classes:
        ae.add_requested_context(c, sorted(syntaxes[c]))
    tls_args = (target.tls, target.host) if target.tls is not None else None
    assoc = ae.associate(target.host, target.port, ae_title=target.ae_title, tls_args=tls_args)
    if not assoc.is_established:
        if assoc.is_rejected:
            outcome.error = f"association rejected by {target.ae_title}@{target.host}:{target.port}"
        else:
            outcome.error = f"no association with {target.ae_title}@{target.host}:{target.port} (refused or timed out)"
        return
    try:
        for f in files:
            ds = datasets.get(f.sop_instance_uid)
            if ds is None:
                continue
            if stop is not None and stop.is_set():
                outcome.error = "stopped: the worker is shutting down"
                return
            if not assoc.is_established:
                outcome.error = "association lost"
                return
            try:
                status = assoc.send_c_store(ds)
            except (ValueError, RuntimeError) as e:  # no accepted context fits the file
                plain = _decompressed(ds)
                if plain is None:
                    outcome.failed[f.sop_instance_uid] = (None, f"{f.path.name}: {e}")
                    continue
                try:  # the destination refused the file's compressed syntax: send it uncompressed
                    status = assoc.send_c_store(plain)
                except (ValueError, RuntimeError) as again:
                    outcome.failed[f.sop_instance_uid] = (None, f"{f.path.name}: {again}")
                    continue
            code = int(status.Status) if status and "Status" in status else None
            if code is None:
                outcome.error = f"no response to the C-STORE of {f.sop_instance_uid} within {target.timeout:g} s"
                return  # the association is aborted by pynetdicom; the rest waits for the next attempt
            if _is_success(code):
                acknowledged(f.sop_instance_uid, code)
                outcome.sent += 1
            else:
                comment = str(status.get("ErrorComment", "") or "")
                outcome.failed[f.sop_instance_uid] = (code, f"status 0x{code:04X} {comment}".strip())
    finally:
        if assoc.is_established:
            assoc.release()
