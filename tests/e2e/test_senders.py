"""A mixed-modality folder pushed by three independent real senders, to both acceptors.

The corpus (:mod:`modalities`: DX, MG and intra-oral X-ray For Presentation and For Processing,
breast projection X-ray, CR, CT, MR, US, SC, SR, presentation states, segmentations, RT, IVOCT,
a 12-lead ECG; six transfer syntaxes) is generated into a temporary folder and pushed to
``oxidicom-py serve``, once per acceptor (``OXIDICOM_SCP_IMPLEMENTATION`` = ``asyncio`` and
``pynetdicom``), by:

* DCMTK ``storescu +sd +r`` over the whole folder, with a configuration profile proposing each
  SOP class in exactly the transfer syntaxes of its files (so nothing is transcoded: Big Endian
  and compressed files go as they are), and without ``-nh``, so a refused class halts it;
* DCMTK ``storescu +sd +r`` with its default proposal, over the uncompressed DX, MG, IO, CR, CT
  and MR files (the issue's reproduction; storescu then sends Implicit VR files as Explicit);
* DCMTK ``dcmsend --scan-directories --recurse`` (it proposes Explicit VR Little Endian for
  uncompressed files and transcodes Implicit and Big Endian ones; its report says which);
* GDCM ``gdcmscu --store -r`` over the folder, less the classes GDCM 3.0.21 does not know.

After each push the receiver's side is checked: one stored file and one registered row per SOP
Instance UID, each file readable, with file meta that names the syntax the dataset arrived in and
the dataset's own SOP class and instance, the dataset bytes as sent when the sender did not
transcode, the same content when it did, and no error logged. Each sender has its own calling
AE title, so its files and rows are apart from the others'.
"""

from __future__ import annotations

import re
import secrets
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pydicom
import pytest
from harness import LOOPBACK, dataset_bytes, instance_rows, peer_env, wait_until
from modalities import (
    CR,
    CT,
    DX_PRESENTATION,
    DX_PROCESSING,
    FINDINGS,
    HEIGHT_MAP_SEG,
    IO_PRESENTATION,
    IO_PROCESSING,
    LABEL_MAP_SEG,
    MG_PRESENTATION,
    MG_PROCESSING,
    MR,
    NEWER_THAN_TOOLKITS,
    PATIENT_ID,
    WAVEFORM_ACQUISITION_PR,
    WAVEFORM_PR,
    write_mixed_corpus,
)
from peers import ServeProcess
from psycopg import sql
from psycopg.conninfo import make_conninfo
from pydicom._uid_dict import UID_dictionary
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

pytestmark = pytest.mark.integration

OUR_AET = "OXIDICOMTEST"
# By full path: pynetdicom installs its own storescu & co. into .venv/bin, which would shadow DCMTK's.
STORESCU = "/usr/bin/storescu"
DCMSEND = "/usr/bin/dcmsend"
GDCMSCU = "/usr/bin/gdcmscu"
DCIODVFY = "/usr/bin/dciodvfy"
SENDER_TIMEOUT = 60  # seconds; each push takes well under one
NETWORK_TIMEOUTS = ("-to", "10", "-ta", "10", "-td", "30")  # DCMTK: connect, ACSE, DIMSE

UNCOMPRESSED = frozenset({ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian})
# DCMTK's names of the corpus' transfer syntaxes, as storescu -v prints them ("Converting ... A -> B")
DCMTK_XFER_NAMES = {
    "Little Endian Implicit": ImplicitVRLittleEndian,
    "Little Endian Explicit": ExplicitVRLittleEndian,
    "Big Endian Explicit": ExplicitVRBigEndian,
    "RLE Lossless": RLELossless,
    "JPEG-LS Lossless": JPEGLSLossless,
    "JPEG Baseline": JPEGBaseline8Bit,
}
# The issue's "folder mixing DX, MG and MR", widened to the other classes DCMTK proposes by default
DEFAULT_PROPOSAL_CLASSES = frozenset(
    {DX_PRESENTATION, DX_PROCESSING, MG_PRESENTATION, MG_PROCESSING, IO_PRESENTATION, IO_PROCESSING, CR, CT, MR}
)
REQUIRED_TAGS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "PatientID",
    "StudyDate",
    "Modality",
    "SeriesNumber",
    "InstanceNumber",
    "SeriesDescription",
)


# -- the corpus ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    path: Path
    sop_class: str
    sop_instance: str
    transfer_syntax: str
    modality: str
    series: str

    @property
    def label(self) -> str:
        name = UID_dictionary.get(self.sop_class, (self.sop_class,))[0]
        return f"{self.path.name} ({name}, {self.transfer_syntax})"


@dataclass(frozen=True)
class Corpus:
    folder: Path
    files: dict[str, Source]  # by SOP Instance UID

    def subset(self, name: str, keep: Callable[[Source], bool]) -> tuple[Path, dict[str, Source]]:
        """A folder holding copies of the files ``keep`` selects (created once per module)."""
        folder = self.folder.parent / name
        chosen = {uid: s for uid, s in self.files.items() if keep(s)}
        if not folder.exists():
            folder.mkdir()
            for s in chosen.values():
                shutil.copy(s.path, folder / s.path.name)
        return folder, {uid: replace(s, path=folder / s.path.name) for uid, s in chosen.items()}


def _read_sources(files: list[Path]) -> dict[str, Source]:
    out = {}
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        uid = str(ds.SOPInstanceUID)
        out[uid] = Source(
            path,
            str(ds.SOPClassUID),
            uid,
            str(ds.file_meta.TransferSyntaxUID),
            str(ds.Modality),
            str(ds.SeriesInstanceUID),
        )
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    folder = tmp_path_factory.mktemp("corpus") / "mixed"
    files = write_mixed_corpus(folder)
    return Corpus(folder, _read_sources(files))


def test_corpus_is_small_mixed_complete_and_reproducible(tmp_path: Path, corpus: Corpus) -> None:
    sources = list(corpus.files.values())
    assert 25 <= len(sources) <= 60
    assert sum(s.path.stat().st_size for s in sources) < 2_000_000
    assert {s.transfer_syntax for s in sources} == {
        ImplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        RLELossless,
        JPEGLSLossless,
        JPEGBaseline8Bit,
    }
    assert {s.sop_class for s in sources} >= FINDINGS
    modalities = {s.modality for s in sources}
    assert {"DX", "MG", "IO", "CR", "CT", "MR", "US", "OT", "SR", "PR", "SEG", "ECG", "IVOCT"} <= modalities
    assert {"RTSTRUCT", "RTPLAN", "RTDOSE"} <= modalities
    for s in sources:
        ds = pydicom.dcmread(s.path)
        missing = [tag for tag in REQUIRED_TAGS if str(ds.get(tag, "")) == ""]
        assert not missing, f"{s.label} lacks {missing}"
        assert ds.PatientID == PATIENT_ID and re.fullmatch(r"\d{8}", ds.StudyDate), s.label
        assert ds.file_meta.MediaStorageSOPInstanceUID == s.sop_instance, s.label

    again = write_mixed_corpus(tmp_path / "again")
    assert [p.name for p in again] == [s.path.name for s in sources]
    assert all(p.read_bytes() == (corpus.folder / p.name).read_bytes() for p in again)
    other = _read_sources(write_mixed_corpus(tmp_path / "other", seed="another seed"))
    assert len(other) == len(sources) and not set(other) & set(corpus.files)


def test_corpus_passes_dciodvfy(corpus: Corpus) -> None:
    """Every file whose IOD dicom3tools knows is free of IOD errors (the newer classes it cannot check)."""
    errors = {}
    for s in corpus.files.values():
        if s.sop_class in NEWER_THAN_TOOLKITS:
            continue
        proc = subprocess.run([DCIODVFY, "-new", str(s.path)], capture_output=True, text=True, timeout=60)
        lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]
        if lines:
            errors[s.label] = lines
    assert not errors


# -- the receiver, once per acceptor -----------------------------------------------------------


@dataclass
class Receiver:
    acceptor: str
    serve: ServeProcess
    db: str
    files_root: Path


@pytest.fixture(scope="module", params=["asyncio", "pynetdicom"])
def receiver(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, pg_server_uri: str
) -> Iterator[Receiver]:
    acceptor: str = request.param
    folder = tmp_path_factory.mktemp(f"receiver-{acceptor}")
    name = f"test_senders_{acceptor}_{secrets.token_hex(4)}"
    with psycopg.connect(pg_server_uri, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    db = make_conninfo(pg_server_uri, dbname=name)
    env = {
        "OXIDICOM_DB_CONNECTION": db,
        "OXIDICOM_STATE_DIR": str(folder / "state"),
        "OXIDICOM_FILES_ROOT": str(folder / "files"),
        "OXIDICOM_SCP_AET": OUR_AET,
        "OXIDICOM_SCP_IMPLEMENTATION": acceptor,
        "OXIDICOM_LISTENER_PROCESSES": "1",
        "OXIDICOM_STORAGE_FSYNC": "false",
    }
    try:
        with ServeProcess(env, folder) as serve:
            listening = [str(line.get("msg")) for line in serve.lines if "listening on" in str(line.get("msg"))]
            assert listening and all(("(pynetdicom)" in msg) == (acceptor == "pynetdicom") for msg in listening)
            yield Receiver(acceptor, serve, db, folder / "files")
        assert serve.proc is not None and serve.proc.returncode == 0, serve.lines[-5:]
    finally:
        with psycopg.connect(pg_server_uri, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


# -- the senders --------------------------------------------------------------------------------


Pushed = tuple[dict[str, str], str | None]
"""What a sender did: SOP Instance UID -> the syntax it sent it in; why the sender failed (None: it did not)."""
Push = Callable[[int, str, Path, dict[str, Source], Path], Pushed]
"""(port, calling AE title, folder, its files, work folder) -> what it did."""


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=peer_env(), capture_output=True, text=True, timeout=SENDER_TIMEOUT)


def _tail(proc: subprocess.CompletedProcess[str], lines: int = 15) -> str:
    return "\n".join((proc.stdout + proc.stderr).splitlines()[-lines:])


def _storescu_sent(proc: subprocess.CompletedProcess[str], files: dict[str, Source]) -> dict[str, str]:
    """From ``storescu -v``: every "Sending file" is followed by "Converting transfer syntax: A -> B"."""
    by_path = {str(s.path): uid for uid, s in files.items()}
    sent, current = {}, None
    for line in (proc.stdout + proc.stderr).splitlines():
        if m := re.match(r"I: Sending file: (.+)$", line):
            current = by_path.get(m.group(1))
        elif (m := re.match(r"I: Converting transfer syntax: (.+) -> (.+)$", line)) and current is not None:
            assert m.group(2) in DCMTK_XFER_NAMES, f"unknown DCMTK transfer syntax name {m.group(2)!r}"
            sent[current] = DCMTK_XFER_NAMES[m.group(2)]
    return sent


def _storescu_profile(files: dict[str, Source], path: Path) -> Path:
    """A storescu configuration proposing each (SOP class, transfer syntax) of the files in a context of its own."""
    pairs = sorted({(s.sop_class, s.transfer_syntax) for s in files.values()})
    syntaxes = sorted({ts for _, ts in pairs})
    lines = ["[[TransferSyntaxes]]"]
    for i, ts in enumerate(syntaxes):
        lines += [f"[TS{i}]", f"TransferSyntax1 = {ts}"]
    lines += ["[[PresentationContexts]]", "[Corpus]"]
    lines += [f"PresentationContext{n} = {sop}\\TS{syntaxes.index(ts)}" for n, (sop, ts) in enumerate(pairs, 1)]
    lines += ["[[Profiles]]", "[Corpus]", "PresentationContexts = Corpus"]
    path.write_text("\n".join(lines) + "\n")
    return path


def _exited(proc: subprocess.CompletedProcess[str]) -> str | None:
    return None if proc.returncode == 0 else f"{Path(proc.args[0]).name} exited {proc.returncode}:\n{_tail(proc)}"


def push_storescu(port: int, aet: str, folder: Path, files: dict[str, Source], work: Path) -> Pushed:
    profile = _storescu_profile(files, work / "storescu.cfg")
    args = [STORESCU, "-v", "-aet", aet, "-aec", OUR_AET, *NETWORK_TIMEOUTS, "-xf", str(profile), "Corpus"]
    proc = _run([*args, "+sd", "+r", LOOPBACK, str(port), str(folder)])
    return _storescu_sent(proc, files), _exited(proc)


def push_storescu_defaults(port: int, aet: str, folder: Path, files: dict[str, Source], work: Path) -> Pushed:
    args = [STORESCU, "-v", "-aet", aet, "-aec", OUR_AET, *NETWORK_TIMEOUTS, "+sd", "+r", LOOPBACK, str(port)]
    proc = _run([*args, str(folder)])
    return _storescu_sent(proc, files), _exited(proc)


def _dcmsend_report(text: str) -> list[dict[str, str]]:
    """The per-instance blocks of ``dcmsend --create-report-file`` ("Key : value" lines)."""
    blocks = []
    for chunk in text.split("\n\n"):
        fields = dict(
            (key.strip(), value.strip())
            for key, _, value in (line.partition(":") for line in chunk.splitlines())
            if value
        )
        if "SOP Instance" in fields:
            blocks.append(fields)
    return blocks


def push_dcmsend(port: int, aet: str, folder: Path, files: dict[str, Source], work: Path) -> Pushed:
    report = work / "dcmsend-report.txt"  # written only when the transfer went through
    args = [DCMSEND, "-v", "-aet", aet, "-aec", OUR_AET, *NETWORK_TIMEOUTS, "--create-report-file", str(report)]
    proc = _run([*args, "--scan-directories", "--recurse", LOOPBACK, str(port), str(folder)])
    blocks = _dcmsend_report(report.read_text()) if report.exists() else []
    sent = {b["SOP Instance"]: b["Network Xfer"].split()[0] for b in blocks if "Network Xfer" in b}
    error = _exited(proc)
    summary = re.search(r"with status SUCCESS\s*:\s*(\d+)", proc.stdout + proc.stderr)
    if error is None and (summary is None or int(summary.group(1)) != len(files)):
        error = f"dcmsend reports {summary.group(1) if summary else 'no'} successful stores of {len(files)}"
    failed = [b for b in blocks if not b.get("DIMSE Status", "").startswith("0x0000")]
    if error is None and failed:
        error = f"dcmsend reports failed stores: {failed}"
    return sent, error


def push_gdcmscu(port: int, aet: str, folder: Path, files: dict[str, Source], work: Path) -> Pushed:
    proc = _run([GDCMSCU, "--store", "-r", "--aetitle", aet, "--call", OUR_AET, LOOPBACK, str(port), str(folder)])
    # GDCM 3.0.21 (Debian 12) aborts after every A-RELEASE-RP ("ProtocolStream as nullptr is invalid"),
    # with a DICOM server of any make; its exit status says nothing about the stores, the receiver does.
    released_then_aborted = proc.returncode == -signal.SIGABRT and "ProtocolStream as nullptr" in proc.stderr
    sent = {uid: s.transfer_syntax for uid, s in files.items()}  # GDCM sends each file as it is
    return sent, None if released_then_aborted else _exited(proc)


@dataclass(frozen=True)
class Sender:
    aet: str
    push: Push
    subset: str | None = None  # None: the whole folder
    keep: Callable[[Source], bool] = lambda s: True


SENDERS = {
    "storescu": Sender("STORESCU", push_storescu),
    "storescu-defaults": Sender(
        "STORESCUDEF",
        push_storescu_defaults,
        "uncompressed-dx-mg-io-cr-ct-mr",
        lambda s: s.sop_class in DEFAULT_PROPOSAL_CLASSES and s.transfer_syntax in UNCOMPRESSED,
    ),
    "dcmsend": Sender("DCMSEND", push_dcmsend),
    "gdcmscu": Sender("GDCMSCU", push_gdcmscu, "known-to-gdcm", lambda s: s.sop_class not in NEWER_THAN_TOOLKITS),
}


# -- the test ------------------------------------------------------------------------------------


def _ended(rx: Receiver, aet: str, start: int) -> list[dict[str, Any]]:
    return [
        line
        for line in rx.serve.lines[start:]
        if str(line.get("msg", "")).startswith("association ended") and line.get("calling_ae") == aet
    ]


def _rows(db: str, aet: str) -> list[tuple[str, str, str]]:
    with psycopg.connect(db, connect_timeout=5) as conn:
        return conn.execute(
            'SELECT f.fname, f."Modality", f."SeriesInstanceUID" FROM pacsfiles_pacsfile f '
            "JOIN pacsfiles_pacs p ON p.id = f.pacs_id WHERE p.identifier = %s",
            (aet,),
        ).fetchall()


def _content(path: Path) -> tuple[dict[str, Any], np.ndarray | None]:
    """A dataset's values independent of its encoding: the JSON model less the pixels, and the pixels."""
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array if "PixelData" in ds else None
    ds.pop("PixelData", None)
    return ds.to_json_dict(), pixels


def _real_transfer_syntax(uid: str) -> bool:
    entry = UID_dictionary.get(uid)
    return entry is not None and entry[1] == "Transfer Syntax"


def _check_instance(stored: Path, source: Source, sent_ts: str | None) -> list[str]:
    """What is wrong with one stored instance (empty: nothing)."""
    try:
        ds = pydicom.dcmread(stored)
    except Exception as e:  # any reason pydicom cannot read it is a finding
        return [f"unreadable by pydicom: {e}"]
    meta = ds.file_meta
    ts = str(meta.get("TransferSyntaxUID", ""))
    problems = []
    if not _real_transfer_syntax(ts):
        problems.append(f"file meta TransferSyntaxUID {ts!r} is not a transfer syntax")
    if sent_ts is None:
        problems.append("the sender does not say which transfer syntax it sent")
    elif ts != sent_ts:
        problems.append(f"file meta TransferSyntaxUID {ts} but the dataset was sent in {sent_ts}")
    if meta.get("MediaStorageSOPClassUID") != ds.get("SOPClassUID") or ds.get("SOPClassUID") != source.sop_class:
        problems.append(
            f"MediaStorageSOPClassUID {meta.get('MediaStorageSOPClassUID')}, SOPClassUID {ds.get('SOPClassUID')}"
        )
    if (
        meta.get("MediaStorageSOPInstanceUID") != ds.get("SOPInstanceUID")
        or ds.get("SOPInstanceUID") != source.sop_instance
    ):
        problems.append(f"MediaStorageSOPInstanceUID {meta.get('MediaStorageSOPInstanceUID')}")
    if problems:
        return problems
    if sent_ts == source.transfer_syntax:
        if dataset_bytes(stored) != dataset_bytes(source.path):
            problems.append("dataset bytes differ from the file sent as it was")
    else:  # the sender transcoded: the values must have survived
        (ours, our_pixels), (theirs, their_pixels) = _content(stored), _content(source.path)
        if ours != theirs:
            changed = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
            problems.append(f"transcoded dataset differs from the source in {changed}")
        if (our_pixels is None) != (their_pixels is None) or (
            our_pixels is not None and not np.array_equal(our_pixels, their_pixels)
        ):
            problems.append("transcoded pixels differ from the source's")
    return problems


@pytest.mark.parametrize("sender_name", list(SENDERS))
def test_sender_push_is_stored_and_registered_completely(
    receiver: Receiver, corpus: Corpus, sender_name: str, tmp_path: Path
) -> None:
    sender = SENDERS[sender_name]
    if sender.subset is None:
        folder, files = corpus.folder, corpus.files
    else:
        folder, files = corpus.subset(sender.subset, sender.keep)
    _push_and_check(receiver, sender.push, sender.aet, folder, files, tmp_path)


def _class_id(uid: str) -> str:
    newer = {
        LABEL_MAP_SEG: "LabelMapSegmentationStorage",
        HEIGHT_MAP_SEG: "HeightMapSegmentationStorage",
        WAVEFORM_PR: "WaveformPresentationStateStorage",
        WAVEFORM_ACQUISITION_PR: "WaveformAcquisitionPresentationStateStorage",
    }
    return newer.get(uid) or UID_dictionary[uid][4]


@pytest.mark.parametrize("sop_class", sorted(FINDINGS), ids=_class_id)
def test_each_class_the_issue_found_refused_is_stored(
    receiver: Receiver, corpus: Corpus, sop_class: str, tmp_path: Path
) -> None:
    """The issue's findings one by one, each pushed alone by storescu (which halts on a refusal)."""
    folder, files = corpus.subset(f"class-{sop_class}", lambda s: s.sop_class == sop_class)
    aet = f"FINDING{sorted(FINDINGS).index(sop_class):02d}"
    _push_and_check(receiver, push_storescu, aet, folder, files, tmp_path)


def _push_and_check(
    receiver: Receiver, push: Push, aet: str, folder: Path, files: dict[str, Source], work: Path
) -> None:
    """Push ``folder`` (holding ``files``) as ``aet``; fail with everything wrong on the receiver's side."""
    assert files
    start = len(receiver.serve.lines)
    sent, push_error = push(receiver.serve.port, aet, folder, files, work)

    # the receiver's account of the association(s), then its rows for what it says it stored
    try:
        ended = wait_until(lambda: _ended(receiver, aet, start), 5, what=f"the end of {aet}'s association")
    except AssertionError:  # never accepted (or never ended): the report below says so
        ended = []
    stored_count = sum(int(line.get("stored", 0)) for line in ended)
    wait_until(lambda: len(_rows(receiver.db, aet)) >= stored_count, 30, what=f"{stored_count} rows for {aet}")

    base = receiver.files_root / "SERVICES" / "PACS" / aet
    stored: dict[str, list[Path]] = {}
    for path in base.rglob("*.dcm") if base.exists() else []:
        stored.setdefault(path.name.split("-", 1)[1].removesuffix(".dcm"), []).append(path)
    rows = _rows(receiver.db, aet)
    row_by_fname = {fname: (modality, series) for fname, modality, series in rows}

    problems: dict[str, list[str]] = {}
    for uid, source in sorted(files.items(), key=lambda item: item[1].path.name):
        paths = stored.get(uid, [])
        if len(paths) != 1:
            problems[source.label] = [f"{len(paths)} stored files"]
            continue
        fname = str(paths[0].relative_to(receiver.files_root))
        found = _check_instance(paths[0], source, sent.get(uid))
        n_rows = sum(1 for row in rows if row[0] == fname)
        if n_rows != 1:
            found.append(f"{n_rows} rows")
        elif row_by_fname[fname] != (source.modality, source.series):
            found.append(f"row has Modality, SeriesInstanceUID {row_by_fname[fname]}")
        if found:
            problems[source.label] = found
    errors = [line for line in receiver.serve.lines[start:] if line.get("level") in ("error", "critical")]
    report = {
        "acceptor": receiver.acceptor,
        "calling AE title": aet,
        "sender failed": push_error,
        "instances with problems": problems,
        "stored but not sent": sorted(set(stored) - set(files)),
        "associations": [
            {k: line.get(k) for k in ("outcome", "received", "stored", "rejected", "failed")} for line in ended
        ],
        "error log lines": [line.get("msg") for line in errors],
    }
    text = _format(report)
    assert push_error is None and not problems and not report["stored but not sent"] and not errors, text
    assert ended and all(line.get("outcome") == "released" for line in ended), text
    assert all(int(line.get("rejected", 0)) == 0 and int(line.get("failed", 0)) == 0 for line in ended), text
    assert len(rows) == len(files) == stored_count == instance_rows(receiver.db, aet), text


def _format(report: dict[str, Any]) -> str:
    """The findings of one push, one per line, readable in a failed test's output."""
    lines = []
    for key, value in report.items():
        if isinstance(value, dict):
            lines.append(f"{key}: {len(value)}")
            lines += [f"  {label}: {'; '.join(found)}" for label, found in value.items()]
        else:
            lines.append(f"{key}: {value}")
    return "\n".join(lines)
