"""C-FIND for NumberOfSeriesRelatedInstances (0020,1209), with pynetdicom as the SCU.

One Study Root Q/R FIND at SERIES level per series, on an association of its own, with both
StudyInstanceUID and SeriesInstanceUID set (some PACSes require both) and
NumberOfSeriesRelatedInstances asked for.

Unlike the reference (no timeouts at all: a silent PACS stalled it forever), a query never takes
much longer than ``connect_timeout + response_timeout``, whatever the peer does:

* pynetdicom's own timeouts: ``connection_timeout`` for the TCP connect, ``acse_timeout`` for the
  A-ASSOCIATE and A-RELEASE answers, ``dimse_timeout`` for each C-FIND response (recomputed so it
  never reaches past the deadline); ``network_timeout`` (idle association) is the whole budget, as
  it only matters between operations and would otherwise just log a second timeout;
* a read timeout kept on the socket (pynetdicom clears it once connected, so a peer that sends
  half a PDU would block its reader thread forever);
* the query runs in a worker thread and the caller waits for it only until the deadline; then it
  sends A-ABORT if it can, shuts the socket down and stops pynetdicom's reader thread, and returns.

The answer is the first pending response whose SeriesInstanceUID (NUL removed, trimmed) is the
queried one and whose NumberOfSeriesRelatedInstances (first value, trimmed) is a non-negative
integer; other responses are skipped with a warning. Once it is found, the rest of the C-FIND may
take ``_DRAIN_GRACE`` to end before we abort; otherwise the association is released.

Nothing raises: every failure is a :class:`SeriesCount` with ``count=None`` and the reason.

pynetdicom 3.0 internals used (check them on upgrade): ``AE._create_socket`` and
``AssociationSocket._create_socket`` (our socket: TCP_NODELAY, read timeout, connect error kept),
``Association._kill`` / ``_reactor_checkpoint`` and the DUL's state machine (to stop without
waiting), ``_config.LOG_RESPONSE_IDENTIFIERS``.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from pydicom import config as pydicom_config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import _config, evt
from pynetdicom.association import Association
from pynetdicom.fsm import TRANSITION_TABLE
from pynetdicom.pdu_primitives import A_ABORT, A_ASSOCIATE, A_P_ABORT
from pynetdicom.status import code_to_category

from oxidicom_py.net.cfind_transport import QueryAE, TcpSocket

log = logging.getLogger("oxidicom_py.completion")

# pynetdicom logs every association step at INFO; keep its errors only (unless someone chose a level).
if logging.getLogger("pynetdicom").level == logging.NOTSET:
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
# pynetdicom pretty-prints every response identifier before deciding whether to log it, which
# converts each value (pydicom then warns about every bad one); we read the raw values ourselves.
_config.LOG_RESPONSE_IDENTIFIERS = False

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
TRANSFER_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
MAX_PDU = 16384
QUERY_RETRIEVE_LEVEL = 0x00080052
STUDY_INSTANCE_UID = 0x0020000D
SERIES_INSTANCE_UID = 0x0020000E
NUMBER_OF_SERIES_RELATED_INSTANCES = 0x00201209
PENDING = (0xFF00, 0xFF01)
CANCEL = 0xFE00
_IS_NON_NEGATIVE = re.compile(r"\+?[0-9]{1,12}")
_IS_MAX = 2**31 - 1

# At the deadline: how long the A-ABORT may take to go out before the socket is shut down.
_STOP_GRACE = 0.1
# The caller's wait ends this much after the worker's own deadline, so the worker, which knows
# best what went wrong, usually reports first.
_REPORT_SLACK = 0.05
# After the answer is found: how long the PACS may take to finish the C-FIND (other matches,
# then the final status) before we abort instead of releasing.
_DRAIN_GRACE = 1.0
# Skipped responses logged at WARNING per query (a PACS that ignores the series key may send one
# per series of the study); the rest at DEBUG, all counted in the error.
_SKIP_WARNINGS = 3


@dataclass(frozen=True)
class SeriesCount:
    """NumberOfSeriesRelatedInstances from the PACS: ``count`` None means "unknown", with the
    reason in ``error``; ``elapsed`` is the wall time of the query in seconds."""

    count: int | None
    error: str | None
    elapsed: float


def query_series_count(
    host: str,
    port: int,
    *,
    calling_ae: str,
    called_ae: str,
    study_uid: str,
    series_uid: str,
    connect_timeout: float,
    response_timeout: float,
) -> SeriesCount:
    """Ask the PACS at ``host:port`` (AE title ``called_ae``) how many instances the series has.

    Blocking (run it in a thread); returns within about ``connect_timeout + response_timeout``
    seconds whatever the peer does, and never raises.
    """
    start = time.monotonic()
    fields: dict[str, Any] = {
        "pacs_address": f"{host}:{port}",
        "called_ae": called_ae,
        "StudyInstanceUID": study_uid,
        "SeriesInstanceUID": series_uid,
    }
    try:
        count, error = _run(host, port, calling_ae, called_ae, study_uid, series_uid, connect_timeout, response_timeout)
    except Exception as exc:  # a bug of ours must not take the caller down
        log.exception("C-FIND failed unexpectedly", extra=fields)
        count, error = None, f"unexpected error: {exc!r}"
    elapsed = time.monotonic() - start
    if error is None:
        log.debug(
            "NumberOfSeriesRelatedInstances from the PACS",
            extra={**fields, "NumberOfSeriesRelatedInstances": count, "cfind_seconds": round(elapsed, 3)},
        )
    else:
        log.warning(
            "C-FIND for NumberOfSeriesRelatedInstances failed: %s",
            error,
            extra={**fields, "error": error, "cfind_seconds": round(elapsed, 3)},
        )
    return SeriesCount(count, error, elapsed)


def _run(
    host: str,
    port: int,
    calling_ae: str,
    called_ae: str,
    study_uid: str,
    series_uid: str,
    connect_timeout: float,
    response_timeout: float,
) -> tuple[int | None, str | None]:
    if not host or not isinstance(port, int) or not 0 < port < 65536:
        return None, f"no valid PACS address ({host!r}, {port!r})"
    if not (connect_timeout > 0 and response_timeout > 0):
        # pynetdicom would read 0 as "no timeout" (connection) or refuse it
        return None, "connect_timeout and response_timeout must be positive"
    budget = connect_timeout + response_timeout
    query = _Query(
        host,
        port,
        calling_ae,
        called_ae,
        _clean(study_uid),
        _clean(series_uid),
        connect_timeout,
        response_timeout,
        time.monotonic() + budget,
    )
    worker = threading.Thread(target=query.run, name=f"oxidicom-cfind-{series_uid[-12:]}", daemon=True)
    worker.start()
    if not query.done.wait(budget + _REPORT_SLACK):
        query.settle(None, f"no answer within the {budget:g} s deadline ({query.phase})")
        query.stop()
    assert query.outcome is not None
    return query.outcome


def _clean(uid: str) -> str:
    return uid.replace("\0", "").strip()


def _raw_text(ds: Dataset, tag: int) -> str | None:
    """An element's value as text, read without pydicom's conversion (so a bad value neither
    raises nor warns); None if the element is absent."""
    if tag not in ds:
        return None
    value = ds.get_item(tag).value
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("ascii", "replace")
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value)


class _Query:
    """One C-FIND, run by :meth:`run` in a worker thread; :meth:`stop` ends it from outside."""

    def __init__(
        self,
        host: str,
        port: int,
        calling_ae: str,
        called_ae: str,
        study_uid: str,
        series_uid: str,
        connect_timeout: float,
        response_timeout: float,
        deadline: float,
    ) -> None:
        self.host, self.port = host, port
        self.calling_ae, self.called_ae = calling_ae, called_ae
        self.study_uid, self.series_uid = study_uid, series_uid
        self.connect_timeout, self.response_timeout = connect_timeout, response_timeout
        self.deadline = deadline
        self.phase = "resolving the address"
        self.done = threading.Event()
        self.cancelled = threading.Event()
        self._lock = threading.Lock()
        self.outcome: tuple[int | None, str | None] | None = None
        self.assoc: Association | None = None
        self.sock: TcpSocket | None = None
        self.acse_answer: Any = None  # the first ACSE primitive received (A-ASSOCIATE-AC/RJ, A-ABORT...)
        self.skipped: list[str] = []
        self.log_fields = {
            "pacs_address": f"{host}:{port}",
            "called_ae": called_ae,
            "StudyInstanceUID": study_uid,
            "SeriesInstanceUID": series_uid,
        }

    def settle(self, count: int | None, error: str | None) -> None:
        """Record the outcome; the first one recorded wins (the worker's, or the deadline's)."""
        with self._lock:
            if self.outcome is None:
                self.outcome = (count, error)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    # -- the worker ---------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._query()
        except Exception as exc:
            log.warning("C-FIND worker failed", exc_info=True, extra=self.log_fields)
            self.settle(None, f"unexpected error: {exc!r}")
        finally:
            self.settle(None, f"C-FIND ended without a result ({self.phase})")  # no-op if settled
            self._finish_threads()
            self.done.set()

    def _query(self) -> None:
        ae = QueryAE(self, ae_title=self.calling_ae)
        ae.connection_timeout = self.connect_timeout
        ae.acse_timeout = self.response_timeout
        ae.dimse_timeout = self.response_timeout
        ae.network_timeout = self.connect_timeout + self.response_timeout
        ae.add_requested_context(STUDY_ROOT_FIND, TRANSFER_SYNTAXES)
        try:
            assoc = ae.associate(
                self.host,
                self.port,
                ae_title=self.called_ae,
                max_pdu=MAX_PDU,
                evt_handlers=[(evt.EVT_ACSE_RECV, self._on_acse_received)],
            )
        except (OSError, ValueError, TypeError) as exc:  # unresolvable host, invalid AE title...
            self.settle(None, f"cannot start the association: {exc}")
            return
        self.assoc = assoc
        if not assoc.is_established:
            self.settle(None, self._association_failure(assoc))
            return
        if self.cancelled.is_set():
            return
        self.phase = "waiting for C-FIND responses"
        finished = self._find(assoc)
        self.phase = "releasing the association"
        self._release(assoc, finished)

    def _on_acse_received(self, event: evt.Event) -> None:
        if self.acse_answer is None:
            self.acse_answer = event.primitive  # type: ignore[attr-defined]

    def _association_failure(self, assoc: Association) -> str:
        sock = self.sock
        if sock is not None and sock.connect_error is not None:
            exc = sock.connect_error
            if isinstance(exc, TimeoutError):
                return f"TCP connect timed out after {self.connect_timeout:g} s"
            return f"TCP connect failed: {exc.strerror or exc}"
        if sock is None or not sock.connected:
            return "TCP connect failed"
        answer = self.acse_answer
        if assoc.is_rejected and isinstance(answer, A_ASSOCIATE):
            return f"association rejected: {answer.reason_str} ({answer.result_str}, source {answer.source_str})"
        if isinstance(answer, A_ASSOCIATE) and answer.result == 0x00:
            return "no accepted presentation context for Study Root Q/R FIND"
        if isinstance(answer, A_ABORT):
            return "association aborted by the PACS (A-ABORT) before it was accepted"
        if isinstance(answer, A_P_ABORT):
            return "connection closed (or invalid PDU) before the association was accepted"
        if answer is None:
            return f"no A-ASSOCIATE response within {self.response_timeout:g} s (ACSE timeout)"
        return "invalid A-ASSOCIATE response"

    def _identifier(self) -> Dataset:
        ds = Dataset()
        # the UIDs go out as received, without pydicom's value checks (and their warnings)
        ignore = pydicom_config.IGNORE
        ds.add(DataElement(QUERY_RETRIEVE_LEVEL, "CS", "SERIES", validation_mode=ignore))
        ds.add(DataElement(STUDY_INSTANCE_UID, "UI", self.study_uid, validation_mode=ignore))
        ds.add(DataElement(SERIES_INSTANCE_UID, "UI", self.series_uid, validation_mode=ignore))
        ds.add(DataElement(NUMBER_OF_SERIES_RELATED_INSTANCES, "IS", None, validation_mode=ignore))
        return ds

    def _find(self, assoc: Association) -> bool:
        """Send the C-FIND and read its responses; True if it ended with a final status."""
        wait = assoc.dimse_timeout = max(min(self.response_timeout, self.remaining()), 0.01)
        responses = assoc.send_c_find(self._identifier(), STUDY_ROOT_FIND, msg_id=1, priority=0)
        found: int | None = None
        final: int | None = None
        drain_until = self.deadline
        waited_since = time.monotonic()
        for status, answer in responses:
            if "Status" not in status:  # no response: DIMSE timeout, abort, closed, invalid message
                break
            code = int(status.Status)
            if code not in PENDING:
                final = code
                break
            if found is None:
                found = self._check(answer)
                if found is not None:
                    self.settle(found, None)
                    drain_until = min(self.deadline, time.monotonic() + _DRAIN_GRACE)
            left = drain_until - time.monotonic()
            if left <= 0 or self.cancelled.is_set():
                break  # still pending: _release aborts
            wait = assoc.dimse_timeout = max(min(self.response_timeout, left), 0.01)
            waited_since = time.monotonic()
        if found is not None:
            return final is not None
        if final is None:
            self.settle(None, self._no_response(assoc, time.monotonic() - waited_since, wait))
        elif final == CANCEL:
            self.settle(None, "C-FIND cancelled by the PACS (status 0xFE00)")
        elif code_to_category(final) not in ("Success", "Warning"):
            self.settle(None, f"C-FIND failed with status 0x{final:04X}")
        elif self.skipped:
            n = len(self.skipped)
            self.settle(None, f"no valid answer for the series ({n} response(s) skipped: {self.skipped[0]})")
        else:
            self.settle(None, "no matching series on the PACS (C-FIND returned no match)")
        return final is not None

    def _no_response(self, assoc: Association, waited: float, limit: float) -> str:
        if self.cancelled.is_set():
            return "stopped at the deadline"
        if assoc.acse.is_aborted("a-abort"):
            return "association aborted by the PACS (A-ABORT) during the C-FIND"
        if assoc.acse.is_aborted("a-p-abort"):
            return "connection closed during the C-FIND"
        if waited >= limit - 0.05:
            return f"no C-FIND response within {waited:.1f} s (DIMSE timeout)"
        return "invalid or unexpected response to the C-FIND"

    def _check(self, answer: Dataset | None) -> int | None:
        """The count in a pending response, or None (with a warning) if it is not for our series
        or not a valid number."""
        value: str | None = None
        if answer is None:
            reason = "a pending response without a readable identifier"
        else:
            uid = _raw_text(answer, SERIES_INSTANCE_UID)
            value = _raw_text(answer, NUMBER_OF_SERIES_RELATED_INSTANCES)
            first = value.split("\\")[0].strip() if value is not None else ""
            if uid is None:
                reason = "a pending response without SeriesInstanceUID"
            elif _clean(uid) != self.series_uid:
                reason = f"SeriesInstanceUID {_clean(uid)!r} is not the queried one"
            elif _IS_NON_NEGATIVE.fullmatch(first) and int(first) <= _IS_MAX:
                return int(first)
            else:
                shown = (value or "").strip()
                reason = f"invalid NumberOfSeriesRelatedInstances {shown!r} (not a non-negative integer)"
        self.skipped.append(reason)
        log.log(
            logging.WARNING if len(self.skipped) <= _SKIP_WARNINGS else logging.DEBUG,
            "C-FIND response skipped: %s",
            reason,
            extra={**self.log_fields, "error": "Invalid answer from PACS", "tag": "(0020,1209)", "value": value},
        )
        return None

    def _release(self, assoc: Association, finished: bool) -> None:
        if not assoc.is_established or self.cancelled.is_set():
            return  # aborted already (by pynetdicom, the peer or stop())
        left = self.remaining()
        if finished and left > 0.05:
            self.phase = "releasing the association"
            assoc.acse_timeout = min(self.response_timeout, left)
            assoc.release()  # on a missing A-RELEASE-RP pynetdicom aborts by itself
            if assoc.is_released:
                return
            log.debug("A-RELEASE failed; association aborted", extra=self.log_fields)
        if assoc.is_established:
            assoc.abort()

    def _finish_threads(self) -> None:
        """Make sure pynetdicom's reader thread (not a daemon) ends with the query, and close the
        socket (pynetdicom does not when it shuts down a socket that never connected)."""
        assoc = self.assoc
        if assoc is not None and assoc.dul.is_alive():
            self.stop()
            assoc.dul.join(_STOP_GRACE)
        if self.sock is not None and (assoc is None or not assoc.dul.is_alive()):
            self.sock.close()

    # -- from outside -------------------------------------------------------------------------

    def stop(self) -> None:
        """End the association now: A-ABORT if the state machine can still send one, then shut
        the socket down (which wakes a blocked read) and stop pynetdicom's threads."""
        self.cancelled.set()
        assoc = self.assoc
        try:
            if assoc is not None:
                dul = assoc.dul
                if ("Evt15", dul.state_machine.current_state) in TRANSITION_TABLE and dul.is_alive():
                    assoc.abort(block=False)
                    limit = time.monotonic() + _STOP_GRACE
                    while dul.state_machine.current_state != "Sta1" and dul.is_alive() and time.monotonic() < limit:
                        time.sleep(0.005)
                dul.kill_dul()
                # the association's own reactor thread (what Association.kill() does, minus its
                # unbounded wait for the reader thread)
                assoc._kill = True
                assoc._reactor_checkpoint.set()
        finally:
            if self.sock is not None:
                self.sock.shut()
