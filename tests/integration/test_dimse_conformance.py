"""Conformance of what we answer: commands checked against their context and dataset, every DIMSE
request type, refused presentation contexts named in the log, and the association limit as a
total over the worker processes."""

from __future__ import annotations

import logging
import os
import signal
import struct
import uuid
from pathlib import Path

import psutil
import pydicom
import pytest
from harness import (
    InProcessReceiver,
    RawClient,
    RawScu,
    associate_rq,
    encode_dataset,
    p_data,
    wait_until,
)
from peers import ServeProcess
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from oxidicom_py.dicom import dimse, pdu

MR = "1.2.840.10008.5.1.4.1.1.4"
CT = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = "1.2.840.10008.1.1"
EXPLICIT = "1.2.840.10008.1.2.1"
STORAGE_CONTEXT, VERIFICATION_CONTEXT, CT_CONTEXT = 1, 3, 5
CONTEXTS = [
    (STORAGE_CONTEXT, MR, [EXPLICIT]),
    (VERIFICATION_CONTEXT, VERIFICATION, [EXPLICIT]),
    (CT_CONTEXT, CT, [EXPLICIT]),
]


def _instance(sop_instance: str, sop_class: str = MR) -> bytes:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.77.1"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.77.2"
    ds.PatientID = "CONFPID"
    ds.StudyDate = "20240102"
    ds.Modality = "MR"
    ds.InstanceNumber = 1
    return encode_dataset(ds)


# -- 3: the command must agree with its context and with its dataset --------------------------


@pytest.mark.parametrize(
    ("context_id", "command_class", "command_instance", "dataset_class", "dataset_instance", "status", "why"),
    [
        (STORAGE_CONTEXT, MR, "1.2.3.4.100", MR, "1.2.3.4.101", dimse.CANNOT_UNDERSTAND, "Instance UID"),
        (CT_CONTEXT, CT, "1.2.3.4.102", MR, "1.2.3.4.102", dimse.DATA_SET_DOES_NOT_MATCH_SOP_CLASS, "SOP Class"),
        (VERIFICATION_CONTEXT, MR, "1.2.3.4.103", MR, "1.2.3.4.103", dimse.CANNOT_UNDERSTAND, "context"),
        (STORAGE_CONTEXT, CT, "1.2.3.4.104", CT, "1.2.3.4.104", dimse.CANNOT_UNDERSTAND, "context"),
        (STORAGE_CONTEXT, "31", "31", MR, "1.2.3.4.105", dimse.CANNOT_UNDERSTAND, "context"),
        (STORAGE_CONTEXT, MR, "31", MR, "1.2.3.4.106", dimse.CANNOT_UNDERSTAND, "Instance UID"),
    ],
    ids=[
        "instance-uid-differs",
        "sop-class-differs-from-dataset",
        "c-store-on-verification-context",
        "sop-class-differs-from-context",
        "garbage-command-uids",
        "garbage-instance-uid",
    ],
)
@pytest.mark.parametrize("implementation", ["asyncio", "pynetdicom"])
def test_a_command_at_odds_with_its_context_or_dataset_is_refused_and_nothing_is_stored(
    tmp_path: Path,
    implementation: str,
    context_id: int,
    command_class: str,
    command_instance: str,
    dataset_class: str,
    dataset_instance: str,
    status: int,
    why: str,
) -> None:
    """Before: stored, with the file meta from the command and the path from the dataset."""
    with InProcessReceiver(tmp_path, implementation=implementation) as rx:
        scu = RawScu(rx.port, CONTEXTS)
        dataset = _instance(dataset_instance, dataset_class)
        if implementation == "pynetdicom" and command_class == "31":
            # pynetdicom aborts a C-STORE of a SOP class it has no service class for
            with pytest.raises(AssertionError, match=str(pdu.A_ABORT)):
                scu.store(context_id, command_class, command_instance, dataset)
            scu.close()
            wait_until(rx.idle, 10, what="the association to end")
            assert rx.stored() == [] and rx.rows == []
            return
        got, comment = scu.store(context_id, command_class, command_instance, dataset)
        assert got == status, (hex(got), comment)
        assert why in comment
        # the association goes on: a good instance after it is stored
        good = "1.2.3.4.199"
        assert scu.store(STORAGE_CONTEXT, MR, good, _instance(good)) == (dimse.SUCCESS, "")
        scu.release()
        wait_until(rx.idle, 10, what="the association to end")
        stored = rx.stored()
        assert [p.name.rsplit("-", 1)[-1] for p in stored] == [f"{good}.dcm"]
        assert [r.fname.rsplit("-", 1)[-1] for r in rx.rows] == [f"{good}.dcm"]
        assert rx.staged() == []
        meta = pydicom.dcmread(stored[0], stop_before_pixels=True).file_meta
        assert (meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID) == (MR, good)


# -- 4: every DIMSE request type on a storage context and on the Verification context ---------


def _command(field: int, message_id: int, data_set: bool, **uids: str) -> bytes:
    elements: dict[int, int | str] = {
        dimse.COMMAND_FIELD: field,
        dimse.MESSAGE_ID: message_id,
        dimse.COMMAND_DATA_SET_TYPE: 0x0000 if data_set else dimse.NO_DATA_SET,
    }
    if field == dimse.C_CANCEL_RQ:
        del elements[dimse.MESSAGE_ID]
        elements[dimse.MESSAGE_ID_RESPONDED_TO] = message_id
    names = {
        "affected_class": dimse.AFFECTED_SOP_CLASS_UID,
        "affected_instance": dimse.AFFECTED_SOP_INSTANCE_UID,
        "requested_class": dimse.REQUESTED_SOP_CLASS_UID,
        "requested_instance": dimse.REQUESTED_SOP_INSTANCE_UID,
    }
    elements.update({names[k]: v for k, v in uids.items()})
    return dimse.encode_command(elements)


def _response(client: RawClient) -> tuple[int, dict[int, bytes]]:
    """(PDU type, command elements) of the next PDU; elements only for a command P-DATA."""
    pdu_type, body = client.recv_pdu()
    if pdu_type != pdu.P_DATA_TF:
        return pdu_type, {}
    (_length, _context, control) = struct.unpack_from(">LBB", body)
    assert control & 0x01, "a command PDV"
    raw, pos, out = body[6:], 0, {}
    while pos + 8 <= len(raw):
        _group, elem, length = struct.unpack_from("<HHL", raw, pos)
        out[elem] = raw[pos + 8 : pos + 8 + length]
        pos += 8 + length
    return pdu_type, out


def _us(values: dict[int, bytes], elem: int) -> int:
    return int.from_bytes(values[elem], "little")


def _uid(values: dict[int, bytes], elem: int) -> str:
    return values[elem].rstrip(b"\x00 ").decode()


# Requests that carry a dataset (an identifier, attribute list or event information).
_WITH_DATA = {0x0010, 0x0020, 0x0021, 0x0100, 0x0120, 0x0130, 0x0140}


@pytest.mark.parametrize("context_id", [STORAGE_CONTEXT, VERIFICATION_CONTEXT], ids=["storage", "verification"])
def test_every_dimse_request_gets_the_response_the_standard_prescribes(tmp_path: Path, context_id: int) -> None:
    """Before: a C-CANCEL-RQ was answered with a Command Field 0x8FFF (no such response)."""
    abstract = {STORAGE_CONTEXT: MR, VERIFICATION_CONTEXT: VERIFICATION}[context_id]
    identifier = encode_dataset(Dataset())
    with InProcessReceiver(tmp_path) as rx:
        client = RawClient(rx.port)
        client.send(associate_rq(CONTEXTS, called="OXITEST"))
        assert client.recv_pdu()[0] == pdu.A_ASSOCIATE_AC
        message_id = 0
        for field, name in sorted(dimse.REQUEST_NAMES.items()):
            if field == dimse.C_STORE_RQ:
                continue  # the test above
            message_id += 1
            n_service = field >= 0x0100 and field != dimse.C_CANCEL_RQ
            uids = {"requested_class" if field in (0x0110, 0x0120, 0x0130, 0x0150) else "affected_class": abstract}
            if n_service:
                key = "requested_instance" if "requested_class" in uids else "affected_instance"
                uids[key] = f"1.2.3.9.{message_id}"
            with_data = field in _WITH_DATA
            message = p_data(context_id, _command(field, message_id, with_data, **uids), command=True)
            if with_data:
                message += p_data(context_id, identifier, command=False)
            client.send(message)
            if field == dimse.C_CANCEL_RQ:
                # nothing comes back: the next response is the one to a C-ECHO sent after it
                message_id += 1
                client.send(
                    p_data(
                        context_id,
                        _command(dimse.C_ECHO_RQ, message_id, False, affected_class=VERIFICATION),
                        command=True,
                    )
                )
                pdu_type, values = _response(client)
                assert pdu_type == pdu.P_DATA_TF
                assert (_us(values, dimse.COMMAND_FIELD), _us(values, dimse.MESSAGE_ID_RESPONDED_TO)) == (
                    dimse.C_ECHO_RSP,
                    message_id,
                ), name
                continue
            pdu_type, values = _response(client)
            assert pdu_type == pdu.P_DATA_TF, name
            assert _us(values, dimse.COMMAND_FIELD) == field | 0x8000, name
            assert _us(values, dimse.MESSAGE_ID_RESPONDED_TO) == message_id, name
            assert _us(values, dimse.COMMAND_DATA_SET_TYPE) == dimse.NO_DATA_SET, name
            expected = dimse.SUCCESS if field == dimse.C_ECHO_RQ else dimse.UNRECOGNIZED_OPERATION
            assert _us(values, dimse.STATUS) == expected, name
            if n_service:  # the Requested UIDs come back as the Affected ones
                assert _uid(values, dimse.AFFECTED_SOP_CLASS_UID) == abstract, name
                assert _uid(values, dimse.AFFECTED_SOP_INSTANCE_UID) == f"1.2.3.9.{message_id}", name
        # an unknown Command Field has no response to give: the association is aborted
        client.send(p_data(context_id, _command(0x0777, 99, False, affected_class=abstract), command=True))
        assert client.recv_pdu()[0] == pdu.A_ABORT
        client.close()
        wait_until(rx.idle, 10, what="the association to end")
        assert rx.stored() == [] and rx.staged() == []


# -- 1: refused presentation contexts are named in the log, once an hour per AE and class ----


def test_a_refused_presentation_context_is_logged_once_per_ae_title_and_class(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    calling = "RJ" + uuid.uuid4().hex[:10].upper()  # unique: the once-an-hour memory is per process
    unknown = "1.2.826.0.1.3680043.8.498.99.1"
    deflated = "1.2.840.10008.1.2.1.99"
    contexts = [(1, MR, [EXPLICIT]), (3, unknown, [EXPLICIT]), (5, CT, [deflated])]
    caplog.set_level(logging.INFO, logger="oxidicom_py")
    with InProcessReceiver(tmp_path) as rx:
        for _ in range(3):
            RawScu(rx.port, contexts, calling=calling).release()
        other = RawScu(rx.port, contexts, calling=calling + "B")
        other.release()
        wait_until(rx.idle, 10, what="the associations to end")
    refused = [r for r in caplog.records if r.getMessage().startswith("presentation context refused")]
    by_ae = sorted((getattr(r, "calling_ae", ""), getattr(r, "sop_class", ""), r.levelname) for r in refused)
    assert by_ae == sorted([(ae, uid, "WARNING") for ae in (calling, calling + "B") for uid in (unknown, CT)]), by_ae
    messages = {r.getMessage() for r in refused}
    assert "presentation context refused: CT Image Storage (none of its transfer syntaxes accepted)" in messages
    assert f"presentation context refused: {unknown} (SOP class not supported)" in messages


# -- 6: the PACS-address warning once per AE title; the association limit over all workers ---


def _serve_env(db_uri: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "OXIDICOM_DB_CONNECTION": db_uri,
        "OXIDICOM_FILES_ROOT": str(tmp_path / "files"),
        "OXIDICOM_SCP_AET": "OXITEST",
        **extra,
    }


@pytest.mark.integration
def test_missing_pacs_address_is_warned_once_per_calling_ae(db_uri: str, tmp_path: Path) -> None:
    """Before: a warning on every association, echo-only ones included."""
    with ServeProcess(_serve_env(db_uri, tmp_path, OXIDICOM_LISTENER_PROCESSES="1"), tmp_path) as rx:
        for n in range(3):
            scu = RawScu(rx.port, CONTEXTS, calling="NOADDRESS", called="OXITEST")
            uid = generate_uid()
            assert scu.store(STORAGE_CONTEXT, MR, uid, _instance(uid))[0] == dimse.SUCCESS, n
            scu.release()
        echo_only = RawScu(rx.port, CONTEXTS, calling="ECHOONLY", called="OXITEST")
        echo_only.send(p_data(3, _command(dimse.C_ECHO_RQ, 1, False, affected_class=VERIFICATION), command=True))
        assert _response(echo_only)[0] == pdu.P_DATA_TF
        echo_only.release()
        wait_until(
            lambda: sum(1 for line in rx.lines if str(line.get("msg", "")).startswith("association ended")) >= 4,
            20,
            what="four associations ended",
        )
    warned = [line for line in rx.lines if "OXIDICOM_PACS_ADDRESS has no entry" in str(line.get("msg"))]
    assert [(line["level"], line["calling_ae"]) for line in warned if line["level"] != "debug"] == [
        ("warning", "NOADDRESS")
    ]


def _associate(port: int) -> RawClient | None:
    """An open association, or None when it was refused with A-ASSOCIATE-RJ (local limit)."""
    client = RawClient(port)
    client.send(associate_rq(CONTEXTS, called="OXITEST"))
    pdu_type, body = client.recv_pdu()
    if pdu_type == pdu.A_ASSOCIATE_RJ:
        assert tuple(body[1:4]) == (
            pdu.RJ_TRANSIENT,
            pdu.RJ_SOURCE_PRESENTATION,
            pdu.RJ_PRESENTATION_LOCAL_LIMIT_EXCEEDED,
        )
        client.close()
        return None
    assert pdu_type == pdu.A_ASSOCIATE_AC
    return client


def _release(client: RawClient) -> None:
    client.send(bytes((pdu.A_RELEASE_RQ, 0, 0, 0, 0, 4, 0, 0, 0, 0)))
    assert client.recv_pdu()[0] == pdu.A_RELEASE_RP
    client.close()


@pytest.mark.integration
def test_the_association_limit_is_a_total_over_the_workers(db_uri: str, tmp_path: Path) -> None:
    """Before: each of the 2 workers took ceil(3/2) = 2, so 4 were accepted, and a 3+1 split of
    4 associations over a limit of 4 refused one while a worker had room."""
    env = _serve_env(db_uri, tmp_path, OXIDICOM_LISTENER_PROCESSES="2", OXIDICOM_LISTENER_THREADS="3")
    with ServeProcess(env, tmp_path) as rx:
        assert rx.proc is not None
        for round_ in range(2):
            held = [_associate(rx.port) for _ in range(3)]
            assert all(c is not None for c in held), round_
            assert _associate(rx.port) is None, "a 4th association over a limit of 3"
            if round_ == 0:
                # a slot given back is free again, whichever worker takes the next one
                first = held.pop()
                assert first is not None
                _release(first)
                again = wait_until(lambda: _associate(rx.port), 10, what="a slot given back")
                held.append(again)
                for c in held:
                    assert c is not None
                    _release(c)
                wait_until(
                    lambda: (
                        sum(1 for line in rx.lines if str(line.get("msg", "")).startswith("association ended")) >= 4
                    ),
                    10,
                    what="the associations to end",
                )
                continue
            # workers killed while they hold slots: their replacements start with their slots free
            workers = [p for p in psutil.Process(rx.proc.pid).children() if "worker" in p.cmdline()]
            assert len(workers) == 2
            for w in workers:
                os.kill(w.pid, signal.SIGKILL)
            for c in held:
                assert c is not None
                c.close()
            wait_until(
                lambda: sum(1 for line in rx.lines if line.get("msg") == "worker died; starting a new one") >= 2,
                20,
                what="both workers restarted",
            )
            wait_until(lambda: sum(1 for line in rx.lines if str(line.get("msg", "")).startswith("listening")) >= 4, 30)
            after = [
                wait_until(lambda: _associate(rx.port), 10, what="an association after the restart") for _ in range(3)
            ]
            assert _associate(rx.port) is None
            for c in after:
                _release(c)


# -- 1: every storage SOP class is accepted -------------------------------------------------


def test_the_vendored_table_holds_every_storage_class_pydicom_and_pynetdicom_know() -> None:
    """A pydicom release that renames or drops a class cannot make us refuse it; one that adds
    a class makes this fail until ``scripts/storage_classes.py`` has been run."""
    from pydicom._uid_dict import UID_dictionary
    from pynetdicom.sop_class import _STORAGE_CLASSES

    from oxidicom_py.dicom.contexts import DICOMDIR, is_storage_class, storage_sop_classes
    from oxidicom_py.dicom.storage_classes import STANDARD_STORAGE_CLASSES

    installed = {uid for uid, (name, kind, *_r) in UID_dictionary.items() if is_storage_class(name, kind)}
    assert installed <= set(STANDARD_STORAGE_CLASSES)
    assert set(_STORAGE_CLASSES.values()) - {DICOMDIR} <= set(STANDARD_STORAGE_CLASSES)
    assert set(STANDARD_STORAGE_CLASSES) <= storage_sop_classes()
    for uid in (
        "1.2.840.10008.5.1.4.1.1.1.1",  # DX For Presentation: "... Storage - For Presentation"
        "1.2.840.10008.5.1.4.1.1.1.2.1",  # MG For Processing
        "1.2.840.10008.5.1.4.1.1.66.7",  # Label Map Segmentation (newer than pydicom 3.0)
        "1.2.840.10008.5.1.4.1.1.9.100.1",  # Waveform Presentation State (not in pydicom's registry)
    ):
        assert uid in storage_sop_classes(), uid
    assert DICOMDIR not in storage_sop_classes()
    assert "1.2.840.10008.1.20.1" not in storage_sop_classes()  # Storage Commitment is no storage class


def _accepted_contexts(ac: bytes) -> dict[int, int]:
    """Presentation context id -> result, from an A-ASSOCIATE-AC body."""
    out, pos = {}, 68
    while pos + 4 <= len(ac):
        item_type, length = ac[pos], int.from_bytes(ac[pos + 2 : pos + 4], "big")
        if item_type == 0x21:
            out[ac[pos + 4]] = ac[pos + 6]
        pos += 4 + length
    return out


@pytest.mark.parametrize("implementation", ["asyncio", "pynetdicom"])
def test_every_pynetdicom_storage_class_is_accepted(tmp_path: Path, implementation: str) -> None:
    """Before: 14 of pynetdicom's 170 storage classes were refused (DX, MG, IO, breast
    projection, IVOCT, label/height map segmentation, waveform presentation states)."""
    from pynetdicom.sop_class import _STORAGE_CLASSES

    classes = sorted(set(_STORAGE_CLASSES.values()))
    refused: list[str] = []
    with InProcessReceiver(tmp_path, implementation=implementation) as rx:
        for start in range(0, len(classes), 128):  # odd context ids 1..255: 128 per association
            chunk = classes[start : start + 128]
            contexts = [(2 * i + 1, uid, [EXPLICIT]) for i, uid in enumerate(chunk)]
            scu = RawScu(rx.port, contexts)
            results = _accepted_contexts(scu.ac)
            refused += [uid for cid, uid, _ in contexts if results.get(cid) != pdu.PC_ACCEPTANCE]
            scu.release()
    assert refused == []
