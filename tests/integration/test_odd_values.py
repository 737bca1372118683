"""Wrong character sets and odd VRs never fail a batch.

Instances whose header values are hostile to a database row -- character sets missing,
unknown or wrong for the bytes, ISO 2022 escape sequences, invalid UTF-8, NUL bytes, values
longer than their column, malformed dates and ages, non-numeric numbers, standard tags sent
as UN, a VR nobody knows -- are pushed in ONE association, between well-formed instances, so
that they share registration batches. Whatever the receiver answers, it keeps its word:
Success means exactly one file and exactly one row; a refusal carries a comment and leaves
neither; no batch fails, and the well-formed instances are all registered.

Two receivers: ``oxidicom-py serve`` as deployed (series progress included), and the
in-process listener with a real :class:`Registrar` whose linger is long enough that every
instance of the association is registered in one single batch.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import logging
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pydicom
import pytest
from harness import IMPLEMENTATIONS, InProcessReceiver, RawScu, wait_until
from peers import ServeProcess
from psycopg_pool import AsyncConnectionPool

from oxidicom_py.completion import progress
from oxidicom_py.dicom import dimse
from oxidicom_py.record import COLUMN_LIMITS, PacsFileRow
from oxidicom_py.registry.registrar import Registrar
from oxidicom_py.registry.schema import ensure_schema
from oxidicom_py.storage import header
from oxidicom_py.storage.instance_record import make_row, values_with_pydicom
from oxidicom_py.storage.naming import first_value
from oxidicom_py.storage.part10 import file_header
from oxidicom_py.storage.patient_age import parse_patient_age

MR = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT_CONTEXT, IMPLICIT_CONTEXT = 1, 3
ROOT = "1.2.826.0.1.3680043.8.498.7713"
STUDY = f"{ROOT}.1"
SERIES = f"{ROOT}.2"
AET = "ODDVALUES"
OUR_AET = "OXIDICOMTEST"
N_GOOD = 40

_LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}

# tags (group << 16 | element)
CHARSET = 0x00080005
SOP_CLASS = 0x00080016
SOP_INSTANCE = 0x00080018
STUDY_DATE = 0x00080020
ACCESSION = 0x00080050
MODALITY = 0x00080060
STUDY_DESCRIPTION = 0x00081030
SERIES_DESCRIPTION = 0x0008103E
PRIVATE_CREATOR = 0x00090010
PATIENT_NAME = 0x00100010
PATIENT_ID = 0x00100020
BIRTH_DATE = 0x00100030
PATIENT_SEX = 0x00100040
PATIENT_AGE = 0x00101010
PROTOCOL = 0x00181030
STUDY_UID = 0x0020000D
SERIES_UID = 0x0020000E
SERIES_NUMBER = 0x00200011
INSTANCE_NUMBER = 0x00200013
PIXEL_DATA = 0x7FE00010

Elements = dict[int, tuple[str, bytes] | None]

# the example of PS3.5 H.3.1: Japanese in ISO 2022 IR 87, in 7-bit bytes behind escape sequences
ISO2022_NAME = b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B"


def _element(tag: int, vr: str, value: bytes, implicit: bool) -> bytes:
    if len(value) % 2:
        value += b"\x00" if vr in ("UI", "OB", "UN") else b" "
    group, elem = tag >> 16, tag & 0xFFFF
    if implicit:
        return struct.pack("<HHL", group, elem, len(value)) + value
    if vr in _LONG_VRS:
        return struct.pack("<HH2sxxL", group, elem, vr.encode(), len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr.encode("latin-1"), len(value)) + value


def encode(elements: Elements, implicit: bool = False) -> bytes:
    """A dataset, little endian, exactly as given (no validation, no character set handling)."""
    return b"".join(
        _element(tag, *value, implicit=implicit) for tag, value in sorted(elements.items()) if value is not None
    )


def sop(n: int) -> str:
    return f"{ROOT}.3.{n}"


def good(n: int) -> Elements:
    """A well-formed MR instance: explicit VR, UTF-8, every value of the right form."""
    return {
        CHARSET: ("CS", b"ISO_IR 192"),
        SOP_CLASS: ("UI", MR.encode()),
        SOP_INSTANCE: ("UI", sop(n).encode()),
        STUDY_DATE: ("DA", b"20240102"),
        ACCESSION: ("SH", b"ACC1"),
        MODALITY: ("CS", b"MR"),
        STUDY_DESCRIPTION: ("LO", b"Odd values"),
        SERIES_DESCRIPTION: ("LO", b"Good series"),
        PATIENT_NAME: ("PN", b"Good^Patient"),
        PATIENT_ID: ("LO", b"ODDPID"),
        BIRTH_DATE: ("DA", b"19800101"),
        PATIENT_SEX: ("CS", b"F"),
        PATIENT_AGE: ("AS", b"044Y"),
        PROTOCOL: ("LO", b"T1"),
        STUDY_UID: ("UI", STUDY.encode()),
        SERIES_UID: ("UI", SERIES.encode()),
        SERIES_NUMBER: ("IS", b"3"),
        INSTANCE_NUMBER: ("IS", str(n).encode()),
        PIXEL_DATA: ("OW", bytes(range(32))),
    }


@dataclass(frozen=True)
class Case:
    name: str
    changes: Elements
    refused: bool = False
    """True: the instance must be refused; False: it must be stored and registered."""
    row: dict[str, Any] = field(default_factory=dict)
    """Expected column values of its row (stored instances only)."""
    implicit: bool = False


def _odd_series(n: int) -> Elements:
    """Hostile instances get their own series UID, so that the good series stays countable."""
    return {SERIES_UID: ("UI", f"{ROOT}.4.{n}".encode())}


def over(column: str, char: str, extra: int = 1) -> bytes:
    """A value ``extra`` characters longer than its column."""
    return (char * (COLUMN_LIMITS[column] + extra)).encode()


def fitted(column: str, char: str) -> str:
    return char * COLUMN_LIMITS[column]


LONG_PATH = {  # every component of the storage path near its 255 characters: over 1,000 in all
    PATIENT_ID: ("LO", b"P" * 300),
    PATIENT_NAME: ("PN", b"N" * 400),
    STUDY_DESCRIPTION: ("LO", b"S" * 1000),
    SERIES_DESCRIPTION: ("LO", b"D" * 1000),
    INSTANCE_NUMBER: ("IS", b"7" * 200),
}

CASES: list[Case] = [
    # -- character sets
    Case(
        "no charset, Latin-1 bytes",
        {CHARSET: None, PATIENT_NAME: ("PN", b"M\xfcller^Hans")},
        row={"PatientName": "Müller^Hans"},
    ),
    Case(
        "unknown charset",
        {CHARSET: ("CS", b"ISO_IR 999"), PATIENT_NAME: ("PN", b"M\xfcller^Hans")},
        row={"PatientName": "Müller^Hans"},
    ),
    Case("unknown second charset", {CHARSET: ("CS", b"ISO_IR 100\\ISO_IR 999"), PATIENT_NAME: ("PN", b"M\xfcller")}),
    Case(
        "Latin-1 bytes declared UTF-8",
        {PATIENT_NAME: ("PN", b"M\xfcller^J\xf6rg"), STUDY_DESCRIPTION: ("LO", b"\xe9t\xe9")},
        row={"PatientName": "M\ufffdller^J\ufffdrg", "StudyDescription": "\ufffdt\ufffd"},
    ),
    Case(
        "UTF-8 declared Latin-1",
        {CHARSET: ("CS", b"ISO_IR 100"), PATIENT_NAME: ("PN", "Müller^Jörg".encode())},
        row={"PatientName": "MÃ¼ller^JÃ¶rg"},
    ),
    Case(
        "GB18030",
        {CHARSET: ("CS", b"GB18030"), PATIENT_NAME: ("PN", "王^小东".encode("gb18030"))},
        row={"PatientName": "王^小东"},
    ),
    Case(
        "ISO 2022 IR 87",
        {CHARSET: ("CS", b"\\ISO 2022 IR 87"), PATIENT_NAME: ("PN", ISO2022_NAME)},
        row={"PatientName": "Yamada^Tarou=山田^太郎=やまだ^たろう"},
    ),
    Case("ISO 2022 escapes, no charset", {CHARSET: None, PATIENT_NAME: ("PN", ISO2022_NAME)}),
    Case(
        "unknown escape sequence",
        {CHARSET: ("CS", b"ISO 2022 IR 6\\ISO 2022 IR 87"), PATIENT_NAME: ("PN", b"\x1b$Z\xff\xfe\x1b(B^X")},
    ),
    Case("invalid UTF-8", {PATIENT_NAME: ("PN", b"\xff\xfe\xc3\x28^\xa0\xa1"), PATIENT_ID: ("LO", b"ODD\xc0\xafPID")}),
    Case("charset not ASCII", {CHARSET: ("CS", b"\xff\xfe\x00\x01"), PATIENT_NAME: ("PN", b"\xe9")}),
    Case("empty charset", {CHARSET: ("CS", b""), PATIENT_NAME: ("PN", b"\xe9t\xe9")}),
    # -- NUL bytes
    Case(
        "NUL inside values",
        {
            PATIENT_NAME: ("PN", b"Doe\x00^John"),
            STUDY_DESCRIPTION: ("LO", b"Head\x00\x00Neck"),
            PROTOCOL: ("LO", b"\x00T1\x00"),
            ACCESSION: ("SH", b"A\x00B"),
            PATIENT_ID: ("LO", b"ODD\x00PID"),
            MODALITY: ("CS", b"M\x00R"),
            PATIENT_AGE: ("AS", b"04\x004Y"),
        },
        row={"PatientName": "Doe^John", "StudyDescription": "HeadNeck", "ProtocolName": "T1", "PatientID": "ODDPID"},
    ),
    Case(
        "NUL in a non-ASCII value", {PATIENT_NAME: ("PN", "Jörg\x00^Ünal".encode())}, row={"PatientName": "Jörg^Ünal"}
    ),
    Case("PatientID only NUL", {PATIENT_ID: ("LO", b"\x00\x00")}, refused=True),
    Case("PatientID only spaces", {PATIENT_ID: ("LO", b"    ")}, refused=True),
    # -- lengths
    Case(
        "patient values longer than their columns",
        {PATIENT_ID: ("LO", over("PatientID", "P")), PATIENT_NAME: ("PN", over("PatientName", "N", 50))},
        row={"PatientID": fitted("PatientID", "P"), "PatientName": fitted("PatientName", "N")},
    ),
    Case(
        "StudyDescription longer than its column",
        {STUDY_DESCRIPTION: ("LO", over("StudyDescription", "S", 600))},
        row={"StudyDescription": fitted("StudyDescription", "S")},
    ),
    Case(
        "SeriesDescription longer than its column",
        {SERIES_DESCRIPTION: ("LO", over("SeriesDescription", "D"))},
        row={"SeriesDescription": fitted("SeriesDescription", "D")},
    ),
    Case(
        "short columns overflowed",
        {
            ACCESSION: ("SH", over("AccessionNumber", "A")),
            MODALITY: ("CS", over("Modality", "M", 25)),
            PATIENT_SEX: ("CS", b"MALE"),
            PROTOCOL: ("LO", over("ProtocolName", "p", 136)),
        },
        row={
            "AccessionNumber": fitted("AccessionNumber", "A"),
            "Modality": fitted("Modality", "M"),
            "PatientSex": "M",
            "ProtocolName": fitted("ProtocolName", "p"),
        },
    ),
    Case("storage path longer than fname: identifying values too long to cut", LONG_PATH, refused=True),
    Case(
        "long descriptions: stored under a shortened path",
        {
            PATIENT_NAME: ("PN", b"N" * 200),
            STUDY_DESCRIPTION: ("LO", over("StudyDescription", "S")),
            SERIES_DESCRIPTION: ("LO", over("SeriesDescription", "D")),
        },
        row={
            "StudyDescription": fitted("StudyDescription", "S"),
            "SeriesDescription": fitted("SeriesDescription", "D"),
        },
    ),
    Case(
        "UIDs longer than their columns",
        {STUDY_UID: ("UI", b"1." + b"2" * 150), SERIES_UID: ("UI", b"1." + b"3" * 150)},
        row={"StudyInstanceUID": ("1." + "2" * 150)[:100], "SeriesInstanceUID": ("1." + "3" * 150)[:100]},
    ),
    Case("multi-valued PatientID", {PATIENT_ID: ("LO", b"ODDA\\ODDB")}, row={"PatientID": "ODDA"}),
    # -- dates
    Case("PatientBirthDate malformed", {BIRTH_DATE: ("DA", b"19xx0101")}, row={"PatientBirthDate": None}),
    Case("PatientBirthDate 30 February", {BIRTH_DATE: ("DA", b"20230230")}, row={"PatientBirthDate": None}),
    Case(
        "PatientBirthDate in ISO form",
        {BIRTH_DATE: ("DA", b"1980-01-01")},
        row={"PatientBirthDate": dt.date(1980, 1, 1)},
    ),
    Case("StudyDate month 13", {STUDY_DATE: ("DA", b"20241345")}, refused=True),
    Case("StudyDate not a date", {STUDY_DATE: ("DA", b"yesterday")}, refused=True),
    Case("StudyDate in ISO form", {STUDY_DATE: ("DA", b"2024-01-02")}, row={"StudyDate": dt.date(2024, 1, 2)}),
    # -- ages and numbers
    Case("PatientAge abc", {PATIENT_AGE: ("AS", b"abc")}, row={"PatientAge": None}),
    Case("PatientAge 999Y", {PATIENT_AGE: ("AS", b"999Y")}, row={"PatientAge": parse_patient_age("999Y")}),
    Case("PatientAge 12W", {PATIENT_AGE: ("AS", b"12W")}, row={"PatientAge": 84}),
    Case("PatientAge 1e30Y", {PATIENT_AGE: ("AS", b"1e30Y")}, row={"PatientAge": 2**31 - 1}),
    Case("PatientAge -5D", {PATIENT_AGE: ("AS", b"-5D")}, row={"PatientAge": -5}),
    Case(
        "InstanceNumber and SeriesNumber not numbers",
        {INSTANCE_NUMBER: ("IS", b"abc"), SERIES_NUMBER: ("IS", b"../../x")},
    ),
    Case("SeriesNumber huge", {SERIES_NUMBER: ("IS", b"99999999999999")}),
    # -- VRs
    Case(
        "standard tags as UN",
        {
            PATIENT_NAME: ("UN", b"Un^Known"),
            PATIENT_ID: ("UN", b"ODDUN "),
            STUDY_DATE: ("UN", b"20240102"),
            SERIES_DESCRIPTION: ("UN", "Série".encode()),
            PATIENT_AGE: ("UN", b"012Y"),
        },
        row={
            "PatientName": "Un^Known",
            "PatientID": "ODDUN",
            "SeriesDescription": "Série",
            "StudyDate": dt.date(2024, 1, 2),
        },
    ),
    Case(
        "unknown VR XX",
        {PRIVATE_CREATOR: ("XX", b"JUNKJUNK"), PATIENT_SEX: ("XX", b"M ")},
        row={"PatientSex": "M"},
    ),
    # pydicom stops reading at a VR that is not two capital letters: nothing after it is known
    Case("VR not letters", {PRIVATE_CREATOR: ("x1", b"JUNKJUNK")}, refused=True),
    Case(
        "implicit VR, odd values",
        {
            PATIENT_NAME: ("PN", b"Doe\x00^\xff"),
            PATIENT_ID: ("LO", over("PatientID", "I")),
            MODALITY: ("CS", b"M\x00" * 20),
            PATIENT_AGE: ("AS", b"xY"),
        },
        row={"PatientName": "Doe^\ufffd", "PatientID": fitted("PatientID", "I"), "Modality": "M" * 15},
        implicit=True,
    ),
    Case("implicit VR, path too long", LONG_PATH, refused=True, implicit=True),
]


def _instances() -> list[tuple[str, Case | None, Elements]]:
    """(SOP instance UID, case or None for a good one, elements): good, odd, good, odd, ..., good."""
    out: list[tuple[str, Case | None, Elements]] = []
    n = 0
    for i in range(max(N_GOOD, len(CASES) + 1)):
        n += 1
        if i < N_GOOD:
            out.append((sop(n), None, good(n)))
        if i < len(CASES):
            n += 1
            case = CASES[i]
            out.append((sop(n), case, {**good(n), **_odd_series(n), **case.changes}))
    return out


@dataclass
class Pushed:
    outcomes: dict[str, tuple[int, str]]
    cases: dict[str, Case | None]


def push(port: int) -> Pushed:
    """Every instance, in one association; (status, comment) of each."""
    instances = _instances()
    scu = RawScu(
        port, [(EXPLICIT_CONTEXT, MR, [EXPLICIT]), (IMPLICIT_CONTEXT, MR, [IMPLICIT])], calling=AET, called=OUR_AET
    )
    outcomes: dict[str, tuple[int, str]] = {}
    for uid, case, elements in instances:
        implicit = case is not None and case.implicit
        context = IMPLICIT_CONTEXT if implicit else EXPLICIT_CONTEXT
        outcomes[uid] = scu.store(context, MR, uid, encode(elements, implicit))
    scu.release()
    return Pushed(outcomes, {uid: case for uid, case, _ in instances})


def stored_files(root: Path) -> dict[str, list[str]]:
    """SOP instance UID -> stored paths (relative to ``root``) whose file name ends with it."""
    out: dict[str, list[str]] = {}
    for path in (root / "SERVICES" / "PACS" / AET).rglob("*.dcm") if (root / "SERVICES").exists() else []:
        uid = path.name.rsplit("-", 1)[-1].removesuffix(".dcm")
        out.setdefault(uid, []).append(str(path.relative_to(root)))
    return out


def rows(db_uri: str) -> list[dict[str, Any]]:
    with psycopg.connect(db_uri, row_factory=psycopg.rows.dict_row) as conn:
        return conn.execute(
            "SELECT f.* FROM pacsfiles_pacsfile f JOIN pacsfiles_pacs p ON p.id = f.pacs_id WHERE p.identifier = %s",
            (AET,),
        ).fetchall()


def check_promises(pushed: Pushed, files_root: Path, db_rows: list[dict[str, Any]]) -> None:
    """Success <=> exactly one file and one row; refusal <=> a failure status with a comment."""
    files = stored_files(files_root)
    by_fname = {row["fname"]: row for row in db_rows}
    assert len(by_fname) == len(db_rows), "an fname registered twice"
    assert set(by_fname) == {p for paths in files.values() for p in paths}, "every row names a stored file and back"
    wrong: list[str] = []
    for uid, (status, comment) in pushed.outcomes.items():
        case = pushed.cases[uid]
        name = case.name if case is not None else "good"
        if status == dimse.SUCCESS:
            if case is not None and case.refused:
                wrong.append(f"{name}: answered Success, expected a refusal")
            if len(files.get(uid, [])) != 1:
                wrong.append(f"{name}: Success with files {files.get(uid)}")
                continue
            meta = pydicom.filereader.read_file_meta_info(files_root / files[uid][0])
            transfer_syntax = IMPLICIT if case is not None and case.implicit else EXPLICIT
            if (meta.TransferSyntaxUID, meta.MediaStorageSOPInstanceUID) != (transfer_syntax, uid):
                wrong.append(f"{name}: file meta {meta.TransferSyntaxUID}, {meta.MediaStorageSOPInstanceUID}")
            row = by_fname.get(files[uid][0])
            if row is None:
                wrong.append(f"{name}: Success, file stored, no row")
                continue
            for column, expected in (case.row if case is not None else {}).items():
                if row[column] != expected:
                    wrong.append(f"{name}: {column} = {row[column]!r}, expected {expected!r}")
            for column, limit in COLUMN_LIMITS.items():
                assert len(row[column]) <= limit
        else:
            if case is None or not case.refused:
                wrong.append(f"{name}: refused with {status:#06x} {comment!r}")
            if not comment:
                wrong.append(f"{name}: refused without a comment")
            if uid in files:
                wrong.append(f"{name}: refused but stored as {files[uid]}")
    assert not wrong, "\n".join(wrong)
    good = [uid for uid, case in pushed.cases.items() if case is None]
    assert len(good) == N_GOOD
    assert sum(1 for row in db_rows if row["SeriesInstanceUID"] == SERIES) == N_GOOD


BATCH_FAILURES = {
    "row could not be registered",
    "registration task failed",
    "registration failed, retrying the batch",
    "batch rejected by the database, splitting it",
    "series bookkeeping failed",
    "registrar closed before every batch committed",
    "registrations still pending at shutdown",
}


@pytest.mark.integration
def test_hostile_values_in_one_association_through_serve(tmp_path: Path, db_uri: str) -> None:
    files_root = tmp_path / "files"
    env = {
        "OXIDICOM_DB_CONNECTION": db_uri,
        "OXIDICOM_FILES_ROOT": str(files_root),
        "OXIDICOM_SCP_AET": OUR_AET,
        "OXIDICOM_DB_LINGER_MS": "200",  # batches gather several instances of the association
        "OXIDICOM_LISTENER_PROCESSES": "1",
    }
    with ServeProcess(env, tmp_path) as rx:
        pushed = push(rx.port)
        successes = sum(1 for status, _ in pushed.outcomes.values() if status == dimse.SUCCESS)
        wait_until(lambda: len(rows(db_uri)) >= successes, 30, what="a row for every Success")

        def progress_settled() -> list[tuple[Any, ...]] | None:
            with psycopg.connect(db_uri) as conn:
                found = conn.execute(
                    "SELECT state, received, open_associations FROM oxidicom_series_progress "
                    "WHERE pacs_identifier = %s",
                    (AET,),
                ).fetchall()
            return found if found and all(state != "receiving" for state, _, _ in found) else None

        series_progress = wait_until(progress_settled, 30, what="every series of the association ended")
        check_promises(pushed, files_root, rows(db_uri))
        # series progress counted every registered instance once, and nothing stayed open
        assert sum(received for _, received, _ in series_progress) == successes
        assert all(state == "complete" and not still_open for state, _, still_open in series_progress)
        failures = [line for line in rx.lines if line.get("msg") in BATCH_FAILURES]
        assert failures == []
        errors = [line for line in rx.messages("error") if not line["msg"].startswith("instance rejected")]
        assert errors == []
        assert not list((files_root / ".oxidicom-staging").rglob("*.part"))
    assert rx.proc is not None and rx.proc.returncode == 0


# -- in process: one single batch ---------------------------------------------------------------


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class RegisteringReceiver(InProcessReceiver):
    """The in-process listener and storage path, registering with a real Registrar that holds
    every row until :meth:`register` (so that all rows of the association form one batch)."""

    def __init__(self, files_root: Path, db_uri: str, logger: logging.Logger, implementation: str = "asyncio") -> None:
        super().__init__(files_root, ae_title=OUR_AET, implementation=implementation)
        self.db_uri = db_uri
        self.logger = logger
        self.futures: list[asyncio.Future[bool]] = []

    def _stored(self, row: PacsFileRow) -> None:
        self.rows.append(row)
        self.futures.append(self.registrar.submit(row))

    def __enter__(self) -> RegisteringReceiver:
        super().__enter__()

        async def open_registrar() -> None:
            async with await psycopg.AsyncConnection.connect(self.db_uri) as conn:
                await ensure_schema(conn)
            self.pool = AsyncConnectionPool(self.db_uri, min_size=1, max_size=2, open=False)
            await self.pool.open(wait=True, timeout=30)
            self.registrar = Registrar(
                self.pool, batch_size=10_000, linger=3600, logger=self.logger, on_inserted=progress.count_inserted
            )
            await self.registrar.start()

        asyncio.run_coroutine_threadsafe(open_registrar(), self.loop).result(60)
        return self

    def register(self) -> list[bool | BaseException]:
        """Close the registrar (one batch of everything held) and return each row's outcome."""

        async def close() -> list[bool | BaseException]:
            await self.registrar.close(timeout=60)
            return list(await asyncio.gather(*self.futures, return_exceptions=True))

        return asyncio.run_coroutine_threadsafe(close(), self.loop).result(90)

    def __exit__(self, *exc: object) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.pool.close(), self.loop).result(30)
        finally:
            super().__exit__(*exc)


@pytest.fixture
def registry_log() -> Iterator[_Records]:
    logger = logging.getLogger("tests.odd_values.registry")
    handler = _Records()
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@pytest.mark.integration
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_hostile_values_in_one_single_batch(
    tmp_path: Path, db_uri: str, registry_log: _Records, implementation: str
) -> None:
    logger = logging.getLogger("tests.odd_values.registry")
    with RegisteringReceiver(tmp_path / "files", db_uri, logger, implementation) as rx:
        pushed = push(rx.port)
        wait_until(rx.idle, 10, what="the association to end")
        successes = sum(1 for status, _ in pushed.outcomes.values() if status == dimse.SUCCESS)
        assert len(rx.futures) == successes
        assert rx.register() == [True] * successes
    batches = [r for r in registry_log.records if r.getMessage() == "batch committed"]
    assert [r.count for r in batches] == [successes]  # type: ignore[attr-defined]
    assert [r.getMessage() for r in registry_log.records if r.levelno >= logging.ERROR] == []
    assert not any(r.getMessage() in BATCH_FAILURES for r in registry_log.records)
    check_promises(pushed, tmp_path / "files", rows(db_uri))


# -- unit tests of the fixes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("charset", "expected"),
    [
        (b"ISO_IR 100\x00", "Müller"),  # padded with NUL instead of a space
        (b"ISO_IR 100\x00\x00\x00\x00", "Müller"),
        (b"\\ISO 2022 IR 100\x00", "Müller"),
        (b"ISO_IR\x00100", "Müller"),  # a NUL inside a term: unusable, the default repertoire
        (b"\xff\xfe\x00\x01", "Müller"),
        (b"ISO_IR 192\\\x00", "M\ufffdller"),
    ],
)
def test_a_charset_with_nul_bytes_never_raises(charset: bytes, expected: str) -> None:
    """Before: ``codecs.lookup`` raised ValueError (embedded null character) out of the receive
    path, and the association was dropped."""
    values = header.decode_values({"SpecificCharacterSet": charset, "PatientName": b"M\xfcller"})
    assert values["PatientName"] == expected


def test_iso_2022_escape_sequences_are_decoded() -> None:
    """Before: an all-ASCII value was taken as it was, escape sequences and JIS bytes included."""
    raw = {"SpecificCharacterSet": b"\\ISO 2022 IR 87", "PatientName": ISO2022_NAME, "PatientID": b"PID"}
    values = header.decode_values(raw)
    assert values["PatientName"] == "Yamada^Tarou=山田^太郎=やまだ^たろう"
    assert values["PatientID"] == "PID"
    # without a code extension in the character set: whatever pydicom makes of it
    ds = pydicom.filereader.read_dataset(io.BytesIO(encode({PATIENT_NAME: ("PN", ISO2022_NAME)})), False, True)
    assert header.decode_values({"PatientName": ISO2022_NAME})["PatientName"] == str(ds.PatientName)


def test_values_with_pydicom_reads_the_values(tmp_path: Path) -> None:
    """Before: ``Dataset.get(keyword)`` returned the value, and ``.value`` on it raised."""
    elements = {**good(1), PATIENT_NAME: ("PN", b"Doe\\Roe"), PRIVATE_CREATOR: ("XX", b"JUNK")}
    path = tmp_path / "staged.dcm"
    path.write_bytes(file_header(MR, sop(1), EXPLICIT, AET) + encode(elements))
    values = values_with_pydicom(str(path))
    assert values["PatientName"] == "Doe\\Roe"
    assert values["PatientID"] == "ODDPID"
    assert values["InstanceNumber"] == "1"
    assert values["PatientAge"] == "044Y"
    assert values_with_pydicom(str(tmp_path / "absent.dcm")) == dict.fromkeys(header.KEYWORDS)


def _path_values(lengths: dict[str, int]) -> dict[str, str | None]:
    values: dict[str, str | None] = {
        "SOPClassUID": MR,
        "SOPInstanceUID": sop(1),
        "StudyInstanceUID": STUDY,
        "SeriesInstanceUID": SERIES,
        "PatientID": "PID",
        "StudyDate": "20240102",
    }
    for keyword, n in lengths.items():
        values[keyword] = "7" * n if keyword in ("SeriesNumber", "InstanceNumber") else "x" * n
    return {k: first_value(v) for k, v in values.items()}


def test_make_row_fits_the_series_key_to_its_columns() -> None:
    """Before: series progress (keyed by these three, same column sizes) was written with the
    values as received, the database refused the instance's transaction, and its row was lost."""
    values = _path_values({})
    values.update(PatientID="P" * 150, StudyInstanceUID="1." + "2" * 150, SeriesInstanceUID="1.3\ud800.4")
    row = make_row("SERVICES/PACS/X/a/b/c/d.dcm", "X", values, dt.date(2024, 1, 2), "ULID")
    assert row.PatientID == "P" * COLUMN_LIMITS["PatientID"]
    assert row.StudyInstanceUID == ("1." + "2" * 150)[: COLUMN_LIMITS["StudyInstanceUID"]]
    assert row.SeriesInstanceUID == "1.3.4"
