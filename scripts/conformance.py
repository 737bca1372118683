"""Regenerate the generated tables of ``CONFORMANCE.md`` (the DICOM Conformance Statement) from the code.

Every table that lists what the receiver accepts, answers or advertises is written between

    <!-- generated: NAME -->
    ...
    <!-- end generated -->

markers, from the code's own lists: the SOP classes the acceptor really uses, the transfer
syntaxes, the DIMSE status constants, the A-ASSOCIATE-RJ reasons, the settings' defaults, the
implementation UIDs. Everything outside the markers is hand-written prose and kept as it is.

    .venv/bin/python scripts/conformance.py           # rewrite CONFORMANCE.md in place
    .venv/bin/python scripts/conformance.py --check   # exit 1 with a unified diff if it is stale

``--check`` also fails when the code has something this script cannot describe: a status
constant in ``dimse.py`` without a meaning below, a rejection reason without a condition, a
refused transfer syntax without a reason, a setting that no longer exists.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import inspect
import re
import struct
import sys
import tomllib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pydicom._uid_dict import UID_dictionary  # noqa: E402
from pydicom.datadict import dictionary_description  # noqa: E402
from pydicom.uid import UID  # noqa: E402

from oxidicom_py import runtime  # noqa: E402
from oxidicom_py import settings as settings_module  # noqa: E402
from oxidicom_py.dicom import acse, contexts, dimse, pdu  # noqa: E402
from oxidicom_py.dicom.storage_classes import STANDARD_STORAGE_CLASSES  # noqa: E402
from oxidicom_py.net import cfind_scu as cfind  # noqa: E402
from oxidicom_py.net import cfind_transport  # noqa: E402
from oxidicom_py.storage import part10  # noqa: E402

DOCUMENT = ROOT / "CONFORMANCE.md"
SCRIPT = "scripts/conformance.py"

_BLOCK = re.compile(r"(<!-- generated: ([a-z0-9-]+) -->\n)(.*?)(<!-- end generated -->)", re.DOTALL)
_START = re.compile(r"<!-- generated: ([a-z0-9-]+) -->")
_END = "<!-- end generated -->"


class ConformanceError(Exception):
    """The document's markers do not match the generators (a missing, unknown or unclosed block)."""


# -- what this script knows that the code does not say -----------------------------------------

STATUS_MEANINGS: dict[str, str] = {
    "SUCCESS": (
        "C-STORE: the instance is in its final place under the files root: written under a temporary "
        "name and renamed, the file and its folder fsynced first when `OXIDICOM_STORAGE_FSYNC=true`. "
        "Its database row follows asynchronously. C-ECHO: always."
    ),
    "OUT_OF_RESOURCES": (
        "C-STORE: the file could not be staged, written or published (an operating-system error: "
        "disk full, permissions, ...), or storing it failed unexpectedly (ErrorComment `storage failure`). "
        "ErrorComment carries the reason. Nothing is kept; the sender may retry."
    ),
    "CANNOT_UNDERSTAND": (
        "C-STORE, with the reason in ErrorComment: `missing required tag X` (StudyInstanceUID, "
        "SeriesInstanceUID, SOPInstanceUID, PatientID, StudyDate absent or empty); `invalid StudyDate '...'`; "
        "`no safe storage path: ...`; `storage path of N characters, over the 512 of fname` (still too long "
        "after shortening); `Affected SOP Class UID is not the context's` (e.g. a C-STORE on the Verification "
        "context); `Affected SOP Instance UID is not the dataset's`; `C-STORE-RQ without Affected SOP "
        "Instance UID`. Nothing is kept."
    ),
    "DATA_SET_DOES_NOT_MATCH_SOP_CLASS": (
        "C-STORE: the dataset's SOP Class UID (0008,0016) differs from the command's Affected SOP Class UID "
        "(ErrorComment `Data Set does not match SOP Class`). A dataset without (0008,0016) is taken to be "
        "of the announced class. Nothing is kept."
    ),
    "UNRECOGNIZED_OPERATION": (
        "The response, of the request's own response type, to a DIMSE request other than C-STORE, "
        "C-ECHO and C-CANCEL on an accepted presentation context (see the table of DIMSE requests)."
    ),
    "PROCESSING_FAILURE": (
        "C-STORE: the instance's storage was cancelled because the worker process is shutting down "
        "(ErrorComment `cancelled`). Nothing is kept; the sender may retry."
    ),
}
"""What each status constant of ``dimse.py`` is sent for, by constant name."""

OTHER_DIMSE_CONSTANTS = frozenset({"NO_DATA_SET"})
"""Integer constants of ``dimse.py`` that are neither statuses, command fields nor command elements."""

REJECTION_CONDITIONS: dict[str, str] = {
    "protocol_version": "The A-ASSOCIATE-RQ's protocol version does not have bit 0 set (version 1).",
    "application_context": "The application context name is not the DICOM one, `1.2.840.10008.3.1.1.1`.",
    "calling_ae_not_allowed": "`OXIDICOM_SCP_ALLOWED_AETS` is set and the calling AE title is not in it.",
    "called_ae_not_recognized": (
        "`OXIDICOM_SCP_CHECK_CALLED_AET=true` and the called AE title is not `OXIDICOM_SCP_AET`."
    ),
    "local_limit": (
        "`OXIDICOM_LISTENER_THREADS` associations are already open (over all worker processes), or more "
        "than `OXIDICOM_DB_MAX_PENDING` registrations of this worker process wait for the database. "
        "Retry later."
    ),
}
"""When each A-ASSOCIATE-RJ of ``acse.REJECTION_LABELS`` is sent, by metrics label."""

REJECT_SOURCES = {
    1: "DICOM UL service-user",
    2: "DICOM UL service-provider (ACSE related function)",
    3: "DICOM UL service-provider (Presentation related function)",
}
REJECT_REASONS = {  # PS3.8 9.3.4, by source
    1: {
        1: "no-reason-given",
        2: "application-context-name-not-supported",
        3: "calling-AE-title-not-recognized",
        7: "called-AE-title-not-recognized",
    },
    2: {1: "no-reason-given", 2: "protocol-version-not-supported"},
    3: {1: "temporary-congestion", 2: "local-limit-exceeded"},
}
REJECT_RESULTS = {1: "rejected-permanent", 2: "rejected-transient"}

NON_NETWORK_TRANSFER_SYNTAXES: dict[str, str] = {
    "1.2.840.10008.1.2.6.1": "Not a DICOM network encoding (MIME encapsulation, PS3.18).",
    "1.2.840.10008.1.2.6.2": "Not a DICOM network encoding (XML).",
    "1.2.840.10008.1.20": "Not a DICOM network encoding (Papyrus 3 files).",
    "1.2.840.10008.1.2.7.1": "DICOM-RTV (real-time video over SMPTE ST 2110), not a syntax for C-STORE.",
    "1.2.840.10008.1.2.7.2": "DICOM-RTV (real-time video over SMPTE ST 2110), not a syntax for C-STORE.",
    "1.2.840.10008.1.2.7.3": "DICOM-RTV (real-time audio over SMPTE ST 2110), not a syntax for C-STORE.",
}
DEFLATED_REASON = (
    "Deflated: the header elements the receiver needs (path, registration) cannot be read without "
    "inflating the whole stream."
)

PEER_SETTINGS: dict[str, str] = {
    "OXIDICOM_SCP_AET": "Our AE title: the called AE title peers use; also the calling AE title of our C-FIND.",
    "OXIDICOM_LISTENER_PORT": "TCP port of the listener (plain DICOM, or DICOM TLS when `OXIDICOM_TLS_CERT` is set).",
    "OXIDICOM_LISTENER_ADDRESS": "IPv4 address the listener binds to (`0.0.0.0`: every interface).",
    "OXIDICOM_SCP_MAX_PDU_LENGTH": (
        "Maximum PDU length we advertise in the A-ASSOCIATE-AC (0: unlimited; 1 to 4095 are refused at start-up)."
    ),
    "OXIDICOM_SCP_STRICT": (
        "`true`: a P-DATA-TF PDU longer than the maximum we advertised aborts the association. "
        "`false`: it is accepted, with a warning in the log."
    ),
    "OXIDICOM_LISTENER_THREADS": (
        "Maximum simultaneous associations, over all worker processes; one more gets A-ASSOCIATE-RJ "
        "(transient, local limit exceeded)."
    ),
    "OXIDICOM_DB_MAX_PENDING": (
        "While more rows than this wait for the database (per worker process), new associations get "
        "A-ASSOCIATE-RJ (transient, local limit exceeded). 0: never."
    ),
    "OXIDICOM_SCP_ARTIM_TIMEOUT": (
        "Seconds a new connection may take to send its A-ASSOCIATE-RQ (with TLS: also to finish the handshake); "
        "then it is closed."
    ),
    "OXIDICOM_SCP_IDLE_TIMEOUT": "Seconds an association may send nothing before we abort it (A-ABORT). 0: never.",
    "OXIDICOM_SCP_PDU_TIMEOUT": "Seconds a PDU, once begun, may take to arrive completely; then A-ABORT. 0: never.",
    "OXIDICOM_SCP_ALLOWED_AETS": (
        "Comma-separated calling AE titles allowed to associate; others get A-ASSOCIATE-RJ. Unset: any."
    ),
    "OXIDICOM_SCP_ALLOWED_NETWORKS": (
        "Comma-separated client networks (`10.0.0.0/8, 192.0.2.7`); other clients are disconnected before "
        "any PDU is read. Unset: any."
    ),
    "OXIDICOM_SCP_CHECK_CALLED_AET": (
        "`true`: a called AE title other than `OXIDICOM_SCP_AET` gets A-ASSOCIATE-RJ. `false`: any called AE title."
    ),
    "OXIDICOM_SCP_UNCOMPRESSED_ONLY": "`true`: accept only the transfer syntaxes marked so in Table 4.2-5.",
    "OXIDICOM_SCP_PROMISCUOUS": "`true`: accept a presentation context of any abstract syntax (4.2.1.4.1).",
    "OXIDICOM_SCP_IMPLEMENTATION": (
        "`asyncio`: the upper layer this statement describes. `pynetdicom`: a fallback acceptor, not covered here."
    ),
    "OXIDICOM_STORAGE_FSYNC": "`true`: Success is sent only after the file and its folder are fsynced.",
    "OXIDICOM_TLS_CERT": "PEM certificate (chain) of the listener. Set: the port speaks DICOM TLS only.",
    "OXIDICOM_TLS_KEY": "PEM private key of that certificate, unencrypted. Unset: read from `OXIDICOM_TLS_CERT`.",
    "OXIDICOM_TLS_CLIENT_CA": "PEM CA bundle. Set: every client must present a certificate signed by one of them.",
    "OXIDICOM_PACS_ADDRESS": (
        "`host:port` of each sending PACS, by its AE title, for the C-FIND SCU. No entry: no C-FIND, count unknown."
    ),
    "OXIDICOM_CFIND_CONNECT_TIMEOUT": "Seconds for the C-FIND's TCP connect and association.",
    "OXIDICOM_CFIND_TIMEOUT": "Seconds to wait for the C-FIND's responses; then it is aborted.",
}
"""The settings that matter to a peer, in the order of the table, with what they do."""

# Rows of the smaller tables: (setting, what the row is)
ASSOCIATION_LIMITS = (
    ("OXIDICOM_SCP_MAX_PDU_LENGTH", "Maximum PDU length we receive (advertised in the A-ASSOCIATE-AC)"),
    ("OXIDICOM_LISTENER_THREADS", "Maximum simultaneous associations as acceptor"),
    ("OXIDICOM_SCP_ARTIM_TIMEOUT", "ARTIM: seconds from TCP connect to A-ASSOCIATE-RQ"),
    ("OXIDICOM_SCP_IDLE_TIMEOUT", "Seconds without any PDU before A-ABORT (0: never)"),
    ("OXIDICOM_SCP_PDU_TIMEOUT", "Seconds for one PDU to arrive once begun (0: never)"),
    ("OXIDICOM_CFIND_CONNECT_TIMEOUT", "C-FIND SCU: seconds to connect and associate"),
    ("OXIDICOM_CFIND_TIMEOUT", "C-FIND SCU: seconds to wait for the responses"),
)


# -- helpers ---------------------------------------------------------------------------------------


def uid_key(uid: str) -> tuple[int, ...]:
    """Sort key: a UID's components as numbers (``1.2.10`` after ``1.2.9``)."""
    return tuple(int(part) if part.isdigit() else -1 for part in uid.split("."))


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(header: Iterable[str], rows: Iterable[Iterable[object]]) -> str:
    head = list(header)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _setting_field(variable: str) -> dataclasses.Field[Any]:
    """The :class:`Settings` field read from ``variable`` (its ``env`` metadata)."""
    for f in dataclasses.fields(settings_module.Settings):
        if f.metadata.get("env") == variable:
            return f
    raise KeyError(f"{variable} is not a setting of oxidicom_py/settings.py")


def setting_default(variable: str) -> object:
    """The default value of an ``OXIDICOM_*`` variable, from its :class:`Settings` field."""
    f = _setting_field(variable)
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise KeyError(f"{variable}: Settings.{f.name} has no default")


def setting_shown(variable: str) -> str:
    """The default of a variable as the settings show it (e.g. ``*(any)*``), else rendered from its value."""
    shown = _setting_field(variable).metadata.get("shown")
    return str(shown) if shown else show_default(setting_default(variable))


def show_default(value: object) -> str:
    if value is None:
        return "*(unset)*"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    if isinstance(value, Mapping) and not value:
        return "*(empty)*"
    return f"`{value}`"


def hex4(value: int) -> str:
    return f"0x{value:04X}"


# -- reading dimse.py ------------------------------------------------------------------------------


def classify_constants(source: str, namespace: Mapping[str, Any]) -> dict[str, tuple[int, str]]:
    """Every module-level upper-case integer constant of a module's source: name -> (value, kind).

    ``kind`` is ``status`` for the block under a ``# Status ...`` comment, ``element`` under
    ``# Command set element ...``, ``command field`` for ``*_RQ``/``*_RSP`` names, ``other`` for
    :data:`OTHER_DIMSE_CONSTANTS` and ``unclassified`` for anything else (which ``--check`` refuses:
    it could be a status nobody described).
    """
    lines = source.splitlines()
    out: dict[str, tuple[int, str]] = {}
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.Assign | ast.AnnAssign)):
            continue
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        if len(targets) != 1 or not isinstance(targets[0], ast.Name) or not targets[0].id.isupper():
            continue
        name = targets[0].id
        value = namespace.get(name)
        if value is None and node.value is not None:
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                continue
        if type(value) is not int:
            continue
        i = node.lineno - 2
        while i >= 0 and lines[i].strip() and not lines[i].startswith("#"):
            i -= 1
        header = lines[i].lower() if i >= 0 and lines[i].startswith("#") else ""
        if header.startswith("# status"):
            kind = "status"
        elif header.startswith("# command set element"):
            kind = "element"
        elif name.endswith(("_RQ", "_RSP")):
            kind = "command field"
        elif name in OTHER_DIMSE_CONSTANTS:
            kind = "other"
        else:
            kind = "unclassified"
        out[name] = (value, kind)
    return out


def dimse_constants() -> dict[str, tuple[int, str]]:
    return classify_constants(inspect.getsource(dimse), vars(dimse))


def status_constants() -> dict[str, int]:
    return {name: value for name, (value, kind) in dimse_constants().items() if kind == "status"}


def _package_sources() -> dict[str, str]:
    package = ROOT / "oxidicom_py"
    return {str(p.relative_to(package)): p.read_text() for p in sorted(package.rglob("*.py"))}


def status_senders(name: str, sources: Mapping[str, str]) -> list[str]:
    """Modules that use the status constant ``name`` (``dimse.py`` itself: besides its definition)."""
    users = []
    for module, text in sources.items():
        if module == "net/dimse.py":
            uses = [line for line in text.splitlines() if re.search(rf"\b{name}\b", line)]
            if any(not line.startswith(f"{name} =") for line in uses):
                users.append(module)
        elif re.search(rf"\bdimse\.{name}\b", text):
            users.append(module)
    return users


# -- reading dicom/acse.py / net/server.py ------------------------------------------------------------


def rejection_results() -> dict[tuple[int, int], set[int]]:
    """(source, reason) -> the results the acceptor sends them with, read from the refusal tuples
    ``(pdu.RJ_<result>, pdu.RJ_SOURCE_<source>, pdu.RJ_<reason>)`` of dicom/acse.py and net/server.py."""
    from oxidicom_py.net import server

    found: dict[tuple[int, int], set[int]] = {}
    for module in (acse, server):
        for node in ast.walk(ast.parse(inspect.getsource(module))):
            if not isinstance(node, ast.Tuple) or len(node.elts) != 3:
                continue
            names = [
                e.attr
                for e in node.elts
                if isinstance(e, ast.Attribute) and isinstance(e.value, ast.Name) and e.value.id == "pdu"
            ]
            if len(names) != 3 or not all(n.startswith("RJ_") for n in names):
                continue
            result, source, reason = (getattr(pdu, n) for n in names)
            found.setdefault((source, reason), set()).add(result)
    return found


# -- the blocks ------------------------------------------------------------------------------------


def _storage_status(uid: str) -> str:
    if uid in contexts.SIEMENS_PRIVATE_NAMES:
        return "private (Siemens)"
    if uid in STANDARD_STORAGE_CLASSES:
        return "retired" if STANDARD_STORAGE_CLASSES[uid][1] else "standard"
    entry = UID_dictionary.get(uid)
    return "retired" if entry is not None and entry[3] else "standard"


def storage_sop_classes_block(classes: Iterable[str]) -> str:
    rows = [(f"`{uid}`", contexts.sop_class_name(uid), _storage_status(uid)) for uid in sorted(classes, key=uid_key)]
    return table(["SOP Class UID", "SOP Class Name", "status"], rows)


def overview_block(classes: Iterable[str]) -> str:
    classes = set(classes)
    private = sum(1 for uid in classes if uid in contexts.SIEMENS_PRIVATE_NAMES)
    retired = sum(1 for uid in classes if _storage_status(uid) == "retired")
    standard = len(classes) - private
    rows = [
        ("Verification", contexts.sop_class_name(contexts.VERIFICATION), "No", "Yes"),
        (
            "Storage",
            f"{standard} standard storage SOP classes ({retired} of them retired) and {private} private ones (4.2.1.1)",
            "No",
            "Yes",
        ),
        (
            "Query/Retrieve",
            UID(cfind.STUDY_ROOT_FIND).name + " (only to ask for NumberOfSeriesRelatedInstances)",
            "Yes",
            "No",
        ),
    ]
    return table(["Service", "SOP Classes", "User of Service (SCU)", "Provider of Service (SCP)"], rows)


def verification_block() -> str:
    uid = contexts.VERIFICATION
    return table(["SOP Class UID", "SOP Class Name", "role"], [(f"`{uid}`", contexts.sop_class_name(uid), "SCP")])


def private_sop_classes_block() -> str:
    rows = [
        (f"`{uid}`", name) for uid, name in sorted(contexts.SIEMENS_PRIVATE_NAMES.items(), key=lambda i: uid_key(i[0]))
    ]
    return table(["SOP Class UID", "Name"], rows)


def _ts_kind(uid: str) -> str:
    return "encapsulated" if UID(uid).is_encapsulated else "native"


def transfer_syntaxes_block(full: Iterable[str], uncompressed: Iterable[str]) -> str:
    full, uncompressed = set(full), set(uncompressed)
    rows = []
    for uid in sorted(full | uncompressed, key=uid_key):
        ts = UID(uid)
        rows.append(
            (
                f"`{uid}`",
                ts.name,
                _ts_kind(uid),
                "retired" if ts.is_retired else "",
                "yes" if uid in full else "no",
                "yes" if uid in uncompressed else "no",
            )
        )
    return table(
        ["Transfer Syntax UID", "Name", "encoding", "retired", "accepted", "with OXIDICOM_SCP_UNCOMPRESSED_ONLY"], rows
    )


def refused_reason(uid: str) -> str | None:
    if "Deflate" in UID(uid).name:
        return DEFLATED_REASON
    return NON_NETWORK_TRANSFER_SYNTAXES.get(uid)


def refused_transfer_syntaxes_block(refused: Iterable[str]) -> str:
    rows = []
    for uid in sorted(refused, key=uid_key):
        ts = UID(uid)
        name = ts.name + (" (retired)" if ts.is_retired and "Retired" not in ts.name else "")
        rows.append((f"`{uid}`", name, refused_reason(uid) or "**no reason given in scripts/conformance.py**"))
    return table(["Transfer Syntax UID", "Name", "why not"], rows)


def dimse_requests_block() -> str:
    rows = []
    for field, name in sorted(dimse.REQUEST_NAMES.items()):
        if field == dimse.C_STORE_RQ:
            answer = "C-STORE-RSP with a status of Table 4.2-9"
        elif field == dimse.C_ECHO_RQ:
            answer = f"C-ECHO-RSP, status {hex4(dimse.SUCCESS)} (Success), on any accepted context"
        else:
            probe = dimse.Command(field, 1, dimse.NO_DATA_SET, "1.2.3", "")
            response = dimse.failure_response(probe, dimse.UNRECOGNIZED_OPERATION)
            if response is None:
                answer = "no response (nothing to cancel: requests are answered one at a time)"
            else:
                command = dimse.decode_command(response)
                answer = (
                    f"{name.removesuffix('-RQ')}-RSP ({hex4(command.command_field)}), status "
                    f"{hex4(dimse.UNRECOGNIZED_OPERATION)} (unrecognized operation); its dataset, if any, "
                    "is read and discarded first"
                )
        rows.append((name, hex4(field), answer))
    return table(["DIMSE request", "Command Field", "what we answer"], rows)


def _status_type(value: int) -> str:
    if value == 0x0000:
        return "Success"
    if value in (0xFF00, 0xFF01):
        return "Pending"
    if value == 0xFE00:
        return "Cancel"
    if value in (0x0001, 0x0107, 0x0116) or 0xB000 <= value <= 0xBFFF:
        return "Warning"
    if 0xA700 <= value <= 0xA7FF:
        return "Failure (Refused)"
    if 0xA900 <= value <= 0xA9FF or 0xC000 <= value <= 0xCFFF:
        return "Failure (Error)"
    return "Failure"


def status_codes_block(statuses: Mapping[str, int], sources: Mapping[str, str]) -> str:
    rows = []
    for name, value in sorted(statuses.items(), key=lambda i: (i[1], i[0])):
        senders = status_senders(name, sources)
        rows.append(
            (
                f"`{hex4(value)}`",
                _status_type(value),
                f"`{name}`",
                STATUS_MEANINGS.get(name, "**not described in scripts/conformance.py**"),
                ", ".join(f"`{s}`" for s in senders) if senders else "*(not sent)*",
            )
        )
    return table(["Status", "type", "constant (`dimse.py`)", "sent when", "sent by (`oxidicom_py/`)"], rows)


def rejections_block() -> str:
    results = rejection_results()
    rows = []
    for (source, reason), label in sorted(acse.REJECTION_LABELS.items()):
        sent_with = sorted(results.get((source, reason), set()))
        result = ", ".join(f"{r} ({REJECT_RESULTS.get(r, '?')})" for r in sent_with) or "**never sent**"
        rows.append(
            (
                result,
                f"{source} ({REJECT_SOURCES.get(source, '?')})",
                f"{reason} ({REJECT_REASONS.get(source, {}).get(reason, '?')})",
                f"`{label}`",
                REJECTION_CONDITIONS.get(label, "**not described in scripts/conformance.py**"),
            )
        )
    return table(["Result", "Source", "Reason/Diag.", "`reason` label in metrics", "sent when"], rows)


def _cfind_pool() -> int | None:
    return runtime.CFIND_THREADS


def association_limits_block() -> str:
    rows: list[tuple[str, str, str]] = [("Application Context Name", "*(fixed)*", f"`{contexts.APPLICATION_CONTEXT}`")]
    rows += [(what, f"`{var}`", setting_shown(var)) for var, what in ASSOCIATION_LIMITS]
    pool = _cfind_pool()
    rows.append(
        (
            "Maximum simultaneous associations as initiator (C-FIND SCU)",
            "*(fixed)*",
            f"{pool if pool is not None else '?'} per worker process (`OXIDICOM_LISTENER_PROCESSES`)",
        )
    )
    rows.append(("Maximum operations invoked / performed on one association", "*(fixed)*", "1 / 1 (not negotiated)"))
    return table(["limit", "setting", "default"], rows)


def _cfind_ae() -> Any:
    return cfind_transport.QueryAE(cast(Any, None), ae_title=str(setting_default("OXIDICOM_SCP_AET")))


def implementation_block() -> str:
    scu = _cfind_ae()
    rows = [
        (
            "Storage and Verification SCP (A-ASSOCIATE-AC; the Part 10 file meta of every stored file)",
            f"`{part10.IMPLEMENTATION_CLASS_UID}`",
            f"`{part10.IMPLEMENTATION_VERSION_NAME}`",
        ),
        (
            "C-FIND SCU (A-ASSOCIATE-RQ to the PACS)",
            f"`{scu.implementation_class_uid}`",
            f"`{scu.implementation_version_name}`",
        ),
    ]
    return table(["used by", "Implementation Class UID", "Implementation Version Name"], rows)


def cfind_scu_block() -> str:
    rows = [
        ("Abstract syntax", f"`{cfind.STUDY_ROOT_FIND}` {UID(cfind.STUDY_ROOT_FIND).name}"),
        ("Transfer syntaxes proposed, in order", ", ".join(f"`{ts}` {UID(ts).name}" for ts in cfind.TRANSFER_SYNTAXES)),
        ("Role", "SCU (no SCP/SCU Role Selection proposed)"),
        ("Maximum PDU length proposed", f"`{cfind.MAX_PDU}`"),
        ("Calling AE title", f"`OXIDICOM_SCP_AET` (default {setting_shown('OXIDICOM_SCP_AET')})"),
        ("Called AE title", "the calling AE title of the association that delivered the series"),
        ("Presentation address", "the entry for that AE title in `OXIDICOM_PACS_ADDRESS`"),
        ("Query/Retrieve Level", "`SERIES`"),
        (
            "Identifier",
            "StudyInstanceUID (0020,000D) and SeriesInstanceUID (0020,000E) as unique keys, "
            "NumberOfSeriesRelatedInstances (0020,1209) empty (return key)",
        ),
        ("Priority, Message ID", "MEDIUM (0), 1"),
        (
            "After the answer is found",
            f"the PACS may take {cfind._DRAIN_GRACE:g} s to end the C-FIND (A-RELEASE), else A-ABORT",
        ),
        ("Security", "plain TCP, never TLS"),
    ]
    return table(["item", "value"], rows)


_PROBE_CLASS = "1.2.840.10008.5.1.4.1.1.4"
_PROBE_INSTANCE = "1.2.826.0.1.3680043.8.498.1"
_PROBE_AE = "SENDER"
_LONG_LENGTH_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


def file_meta_elements() -> list[tuple[int, str, bytes]]:
    """(tag, VR, value) of the File Meta Information ``part10.file_header`` writes, in order."""
    header = part10.file_header(_PROBE_CLASS, _PROBE_INSTANCE, contexts.EXPLICIT_VR_LE, _PROBE_AE)
    if header[:128] != bytes(128) or header[128:132] != b"DICM":
        raise ConformanceError("part10.file_header no longer starts with a 128-byte preamble and DICM")
    out, pos = [], 132
    while pos < len(header):
        group, elem, vr = struct.unpack_from("<HH2s", header, pos)
        if vr in _LONG_LENGTH_VRS:
            (length,) = struct.unpack_from("<L", header, pos + 8)
            pos += 12
        else:
            (length,) = struct.unpack_from("<H", header, pos + 6)
            pos += 8
        out.append(((group << 16) | elem, vr.decode("ascii"), header[pos : pos + length]))
        pos += length
    return out


def file_meta_block() -> str:
    sources = {
        _PROBE_CLASS: (
            "the C-STORE-RQ's Affected SOP Class UID (= the context's abstract syntax and the dataset's SOP Class UID)"
        ),
        _PROBE_INSTANCE: "the C-STORE-RQ's Affected SOP Instance UID (= the dataset's SOP Instance UID)",
        contexts.EXPLICIT_VR_LE: "the transfer syntax accepted for the presentation context (the dataset's encoding)",
        _PROBE_AE: "the calling AE title of the association (omitted when empty)",
    }
    rows = []
    for tag, vr, value in file_meta_elements():
        if vr == "UL":
            shown = "length of the group"
        elif vr == "OB":
            shown = "`" + "\\".join(f"{b:02X}" for b in value) + "`"
        else:
            text = value.rstrip(b"\0 ").decode("ascii", "replace")
            shown = sources.get(text, f"`{text}`")
        rows.append((f"({tag >> 16:04X},{tag & 0xFFFF:04X})", dictionary_description(tag), vr, shown))
    return table(["Tag", "Attribute", "VR", "value"], rows)


def ae_title_block() -> str:
    rows = [
        (
            "oxidicom_py (Storage SCP, Verification SCP, C-FIND SCU)",
            setting_shown("OXIDICOM_SCP_AET"),
            setting_shown("OXIDICOM_LISTENER_PORT"),
        )
    ]
    return table(["Application Entity", "Default AE Title", "Default TCP/IP Port"], rows)


def parameters_block() -> str:
    rows = [(f"`{var}`", setting_shown(var), what) for var, what in PEER_SETTINGS.items()]
    return table(["variable", "default", "what it does"], rows)


def product_block() -> str:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return table(["Product", "Version"], [(project["name"], project["version"])])


_HEADING = re.compile(r"^(#{2,4}) (.+?)\s*$")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[`*]", "", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def toc_block(document: str) -> str:
    """A table of contents of the document's ``##`` to ``####`` headings (outside code blocks)."""
    lines, seen, fenced = [], {}, False
    for line in document.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        match = None if fenced else _HEADING.match(line)
        if match is None:
            continue
        level, title = len(match.group(1)), match.group(2)
        if title.lower().startswith("2 table of contents"):
            continue
        anchor = slug(title)
        n = seen.get(anchor, 0)
        seen[anchor] = n + 1
        if n:
            anchor = f"{anchor}-{n}"
        lines.append(f"{'  ' * (level - 2)}- [{title.replace('`', '')}](#{anchor})")
    return "\n".join(lines)


def generate_blocks(
    document: str,
    *,
    storage_classes: Iterable[str] | None = None,
    statuses: Mapping[str, int] | None = None,
) -> dict[str, str]:
    """Every generated block, by name. ``storage_classes``/``statuses``: instead of the code's
    (to show that a change in the code changes the document)."""
    classes = frozenset(contexts.storage_sop_classes() if storage_classes is None else storage_classes)
    statuses = status_constants() if statuses is None else statuses
    sources = _package_sources()
    blocks: dict[str, Callable[[], str]] = {
        "product": product_block,
        "table-of-contents": lambda: toc_block(document),
        "overview-services": lambda: overview_block(classes),
        "implementation-identification": implementation_block,
        "association-limits": association_limits_block,
        "association-rejections": rejections_block,
        "verification-sop-class": verification_block,
        "storage-sop-classes": lambda: storage_sop_classes_block(classes),
        "transfer-syntaxes": lambda: transfer_syntaxes_block(
            contexts.accepted_transfer_syntaxes(False), contexts.accepted_transfer_syntaxes(True)
        ),
        "refused-transfer-syntaxes": lambda: refused_transfer_syntaxes_block(contexts.NOT_ACCEPTED_TRANSFER_SYNTAXES),
        "dimse-requests": dimse_requests_block,
        "dimse-status-codes": lambda: status_codes_block(statuses, sources),
        "file-meta": file_meta_block,
        "cfind-scu": cfind_scu_block,
        "ae-titles": ae_title_block,
        "configuration-parameters": parameters_block,
        "private-sop-classes": private_sop_classes_block,
    }
    return {name: make() for name, make in blocks.items()}


# -- the document ----------------------------------------------------------------------------------


def render(document: str, blocks: Mapping[str, str]) -> str:
    """``document`` with the content of every generated block replaced; the prose untouched."""
    starts = _START.findall(document)
    if len(starts) != document.count(_END):
        raise ConformanceError("CONFORMANCE.md: every '<!-- generated: NAME -->' needs one '<!-- end generated -->'")
    duplicated = sorted({name for name in starts if starts.count(name) > 1})
    unknown = sorted(set(starts) - set(blocks))
    missing = sorted(set(blocks) - set(starts))
    if duplicated or unknown or missing:
        raise ConformanceError(
            f"CONFORMANCE.md markers: duplicated {duplicated}, unknown {unknown}, missing {missing} "
            f"(blocks are defined in {SCRIPT})"
        )

    def fill(match: re.Match[str]) -> str:
        start, name, _old, end = match.groups()
        return f"{start}\n{blocks[name]}\n\n{end}"

    rendered, count = _BLOCK.subn(fill, document)
    if count != len(starts):
        raise ConformanceError("CONFORMANCE.md: a generated block is nested or not closed")
    return rendered


def problems() -> list[str]:
    """What the code has that this script cannot describe (each one fails ``--check``)."""
    out = []
    for name, (value, kind) in sorted(dimse_constants().items()):
        if kind == "unclassified":
            out.append(
                f"oxidicom_py/net/dimse.py: {name} = {hex4(value)} is not in a '# Status codes' or "
                f"'# Command set element' block: if it is a status, put it there and describe it in "
                f"STATUS_MEANINGS of {SCRIPT}; otherwise add it to OTHER_DIMSE_CONSTANTS"
            )
        elif kind == "status" and name not in STATUS_MEANINGS:
            out.append(f"oxidicom_py/net/dimse.py: status {name} = {hex4(value)} is not described in {SCRIPT}")
    statuses = status_constants()
    out += [
        f"{SCRIPT}: STATUS_MEANINGS describes {n}, which dimse.py does not define"
        for n in STATUS_MEANINGS
        if n not in statuses
    ]
    results = rejection_results()
    for key, label in sorted(acse.REJECTION_LABELS.items()):
        if label not in REJECTION_CONDITIONS:
            out.append(f"acse.REJECTION_LABELS: {label!r} is not described in {SCRIPT}")
        if key not in results:
            out.append(f"acse.REJECTION_LABELS: {label!r} {key} is never sent by dicom/acse.py or net/server.py")
    for uid in sorted(contexts.NOT_ACCEPTED_TRANSFER_SYNTAXES, key=uid_key):
        if refused_reason(uid) is None:
            out.append(f"contexts.NOT_ACCEPTED_TRANSFER_SYNTAXES: {uid} has no reason in {SCRIPT}")
    for var, _what in (*PEER_SETTINGS.items(), *ASSOCIATION_LIMITS):
        try:
            setting_default(var)
        except KeyError as e:
            out.append(str(e.args[0]))
    return out


def expected(document: str, **overrides: Any) -> str:
    return render(document, generate_blocks(document, **overrides))


def diff(current: str, wanted: str, name: str = "CONFORMANCE.md") -> str:
    return "".join(
        difflib.unified_diff(
            current.splitlines(keepends=True),
            wanted.splitlines(keepends=True),
            fromfile=f"{name} (as it is)",
            tofile=f"{name} (as the code says)",
        )
    )


def check(path: Path = DOCUMENT) -> tuple[list[str], str]:
    """(problems, unified diff); both empty when the document agrees with the code."""
    current = path.read_text()
    return problems(), diff(current, expected(current), path.name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 with a diff when the document is stale")
    parser.add_argument("--file", type=Path, default=DOCUMENT, help="the document (default: CONFORMANCE.md)")
    args = parser.parse_args(argv)
    try:
        found, changes = check(args.file)
    except ConformanceError as e:
        print(e, file=sys.stderr)
        return 1
    for problem in found:
        print(f"conformance: {problem}", file=sys.stderr)
    if args.check:
        if changes:
            sys.stdout.write(changes)
            print(f"{args.file.name} differs from the code: run .venv/bin/python {SCRIPT}", file=sys.stderr)
        return 1 if changes or found else 0
    if found:
        return 1
    if changes:
        args.file.write_text(expected(args.file.read_text()))
        print(f"{args.file.name} regenerated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
