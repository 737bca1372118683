"""Who gets in: calling AE and network allow-lists, the called AE check, idle associations."""

from __future__ import annotations

import ipaddress
import select
import subprocess
import time
from pathlib import Path

import pytest
from harness import (
    LOOPBACK,
    InProcessReceiver,
    RawClient,
    RawScu,
    associate_rq,
    dataset_bytes,
    load_script,
    p_data,
    peer_env,
    sop_of,
)

from oxidicom_py.dicom import dimse, pdu
from oxidicom_py.settings import SettingsError, load

MR = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT = "1.2.840.10008.1.2.1"


def _answer(port: int, **kw: str) -> tuple[int, bytes]:
    c = RawClient(port)
    c.send(associate_rq([(1, MR, [EXPLICIT])], **kw))
    return c.recv_pdu()


def test_calling_ae_allow_list(tmp_path: Path) -> None:
    with InProcessReceiver(tmp_path, allowed_calling_aets=frozenset({"GOODPACS"})) as rx:
        assert _answer(rx.port, calling="GOODPACS")[0] == pdu.A_ASSOCIATE_AC
        pdu_type, body = _answer(rx.port, calling="INTRUDER")
        assert pdu_type == pdu.A_ASSOCIATE_RJ
        assert body[1:4] == bytes((pdu.RJ_PERMANENT, pdu.RJ_SOURCE_USER, pdu.RJ_USER_CALLING_AE_NOT_RECOGNIZED))


def test_called_ae_check(tmp_path: Path) -> None:
    with InProcessReceiver(tmp_path, check_called_aet=True) as rx:
        assert _answer(rx.port, called="OXITEST")[0] == pdu.A_ASSOCIATE_AC
        pdu_type, body = _answer(rx.port, called="SOMEONEELSE")
        assert pdu_type == pdu.A_ASSOCIATE_RJ
        assert body[1:4] == bytes((pdu.RJ_PERMANENT, pdu.RJ_SOURCE_USER, pdu.RJ_USER_CALLED_AE_NOT_RECOGNIZED))
    with InProcessReceiver(tmp_path, check_called_aet=False) as rx:  # the default: any called AE title
        assert _answer(rx.port, called="SOMEONEELSE")[0] == pdu.A_ASSOCIATE_AC


def test_network_allow_list(tmp_path: Path) -> None:
    loopback = (ipaddress.ip_network("127.0.0.0/8"),)
    elsewhere = (ipaddress.ip_network("192.0.2.0/24"),)  # documentation range: never a target
    with InProcessReceiver(tmp_path, allowed_networks=loopback) as rx:
        assert _answer(rx.port)[0] == pdu.A_ASSOCIATE_AC
    with InProcessReceiver(tmp_path, allowed_networks=elsewhere) as rx:
        c = RawClient(rx.port)
        assert c.closed_by_peer()  # disconnected before any PDU is read
        proc = subprocess.run(
            ["/usr/bin/echoscu", "-aec", "OXITEST", LOOPBACK, str(rx.port)],
            env=peer_env(),
            capture_output=True,
            timeout=30,
        )
        assert proc.returncode != 0


def test_idle_association_is_closed_and_a_busy_one_is_not(tmp_path: Path) -> None:
    files = load_script("synthetic").generate(tmp_path / "src", slices=4, rows=16, cols=16)
    with InProcessReceiver(tmp_path / "rx", idle_timeout=0.5) as rx:
        busy = RawScu(rx.port, [(1, MR, [EXPLICIT])])
        for f in files:  # activity keeps it open
            assert busy.store(1, *sop_of(f), dataset_bytes(f))[0] == 0
        busy.release()
        idle = RawScu(rx.port, [(1, MR, [EXPLICIT])])
        pdu_type, _ = idle.recv_pdu()  # nothing sent: after 0.5 s the receiver aborts
        assert pdu_type == pdu.A_ABORT
        assert idle.closed_by_peer()
        assert len(rx.stored()) == 4


def test_a_trickling_sender_is_aborted_and_a_steady_one_is_not(tmp_path: Path) -> None:
    """A sender that dribbles a PDU (a byte every 50 ms keeps the idle timer quiet) is aborted
    once that PDU is OXIDICOM_SCP_PDU_TIMEOUT old; a sender whose PDUs arrive whole is never
    disturbed, however long its association lasts."""
    files = load_script("synthetic").generate(tmp_path / "src", slices=4, rows=16, cols=16)
    with InProcessReceiver(tmp_path / "rx", idle_timeout=60, pdu_timeout=0.4) as rx:
        steady = RawScu(rx.port, [(1, MR, [EXPLICIT])])
        started = time.monotonic()
        for f in files:  # the association outlives the PDU timeout, each PDU arrives at once
            assert steady.store(1, *sop_of(f), dataset_bytes(f))[0] == 0
            time.sleep(0.2)  # pacing the sender, not waiting for the receiver
        assert time.monotonic() - started > 0.4
        steady.release()

        slow = RawScu(rx.port, [(1, MR, [EXPLICIT])])
        sop_class, sop_instance = sop_of(files[0])
        command = dimse.encode_command(
            {
                dimse.AFFECTED_SOP_CLASS_UID: sop_class,
                dimse.COMMAND_FIELD: dimse.C_STORE_RQ,
                dimse.MESSAGE_ID: 1,
                dimse.PRIORITY: 0,
                dimse.COMMAND_DATA_SET_TYPE: 0,
                dimse.AFFECTED_SOP_INSTANCE_UID: sop_instance,
            }
        )
        slow.send(p_data(1, command, command=True))  # a whole C-STORE-RQ: the dataset's PDU trickles
        whole = p_data(1, dataset_bytes(files[0]), command=False)
        trickle_started = time.monotonic()
        slow.send(whole[:20])  # the PDU header and a little of its PDV
        aborted_at = None
        for i in range(20, min(len(whole), 20 + 100)):  # at most 100 bytes, about 5 s
            try:
                slow.send(whole[i : i + 1])
            except OSError:
                break
            if _readable(slow):  # the receiver answered: an A-ABORT (checked below)
                aborted_at = time.monotonic()
                break
            time.sleep(0.05)
        assert aborted_at is not None, "the trickling sender was never aborted"
        # aborted once the PDU is 0.4 s old (to the millisecond in tests/unit/test_acceptor.py;
        # here a bound with room for a busy machine's scheduling)
        assert 0.35 <= aborted_at - trickle_started < 1.5, aborted_at - trickle_started
        pdu_type, _ = slow.recv_pdu()
        assert pdu_type == pdu.A_ABORT
        assert len(rx.stored()) == 4 and rx.staged() == []


def _readable(client: RawClient) -> bool:
    return bool(select.select([client.sock], [], [], 0)[0])


def test_access_settings() -> None:
    s = load(
        {
            "OXIDICOM_SCP_ALLOWED_AETS": "PACS1, PACS2",
            "OXIDICOM_SCP_ALLOWED_NETWORKS": "10.0.0.0/8, 192.168.1.7",
            "OXIDICOM_SCP_CHECK_CALLED_AET": "true",
            "OXIDICOM_SCP_IDLE_TIMEOUT": "0",
        }
    )
    assert s.scp_allowed_aets == frozenset({"PACS1", "PACS2"})
    assert s.scp_allowed_networks == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("192.168.1.7/32"))
    assert s.scp_check_called_aet and s.scp_idle_timeout == 0
    assert load({}).scp_allowed_aets is None and load({}).scp_idle_timeout == 600
    with pytest.raises(SettingsError, match="OXIDICOM_SCP_ALLOWED_NETWORKS"):
        load({"OXIDICOM_SCP_ALLOWED_NETWORKS": "10.0.0.0/33"})
