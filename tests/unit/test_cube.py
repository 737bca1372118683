"""Current ChRIS's side, without servers: LONK encoding, subjects and rate limit, the registration
task's arguments and CUBE's limits on them, and the settings that turn them on."""

from __future__ import annotations

import datetime as dt

import pytest

from oxidicom_py import settings as settings_mod
from oxidicom_py.cube import lonk
from oxidicom_py.cube.registration_task import TASK_NAME, pacs_name_problem, path_problem, task_kwargs
from oxidicom_py.record import PacsFileRow
from oxidicom_py.registry.schema import with_schema
from oxidicom_py.setting_parsers import SettingsError, duration, nats_address


def test_lonk_payloads_are_oxidicoms() -> None:
    assert lonk.progress_payload(1) == b"\x01\x01\x00\x00\x00"
    assert lonk.progress_payload(384) == b"\x01\x80\x01\x00\x00"
    assert lonk.error_payload("bad") == b"\x02bad"
    assert lonk.DONE == b"\x00"
    assert lonk.decode(lonk.progress_payload(70000)) == ("progress", 70000)
    assert lonk.decode(lonk.error_payload("é")) == ("error", "é")
    assert lonk.decode(b"\x00") == ("done", None)
    with pytest.raises(ValueError):
        lonk.decode(b"\x07")


def test_subjects_replace_what_nats_forbids() -> None:
    assert lonk.subject_of("oxidicom", "OXITESTORTHANC", "1.2.3.4") == "oxidicom.OXITESTORTHANC.1_2_3_4"
    assert lonk.subject_of("test.oxidicom", "MY PACS*>", "1.2\0") == "test.oxidicom.MY_PACS__.1_2"


def test_the_limiter_lets_one_count_per_interval_through_and_forgets_ended_series() -> None:
    limiter = lonk.SubjectLimiter(0.5)
    assert limiter.allow("s", 10.0)  # a new subject: at once
    assert not limiter.allow("s", 10.2)
    assert limiter.allow("other", 10.2)  # per subject
    assert limiter.allow("s", 10.5)
    limiter.forget("s")
    assert limiter.allow("s", 10.6)  # the series' next association starts afresh


def _row(**values: object) -> PacsFileRow:
    base: dict[str, object] = {
        "fname": "SERVICES/PACS/OXI/1-x-/S-A-20130308/00005-D-a27cf06/0001-1.dcm",
        "pacs_identifier": "OXI",
        "PatientID": "1449c1d",
        "StudyDate": dt.date(2013, 3, 8),
        "StudyInstanceUID": "1.2.3",
        "SeriesInstanceUID": "1.2.3.4",
    }
    base.update(values)
    return PacsFileRow(**base)  # type: ignore[arg-type]


def test_task_kwargs_have_cubes_names_dashed_dates_and_none_for_absent_values() -> None:
    row = _row(PatientName="anonymized", PatientBirthDate="20090701", PatientAge=1096, PatientSex="M", Modality="MR")
    kwargs = task_kwargs(row, "SERVICES/PACS/OXI/1-x-/S-A-20130308/00005-D-a27cf06", 192)
    assert TASK_NAME == "pacsfiles.tasks.register_pacs_series"
    assert kwargs == {
        "PatientID": "1449c1d",
        "StudyDate": "2013-03-08",
        "StudyInstanceUID": "1.2.3",
        "SeriesInstanceUID": "1.2.3.4",
        "pacs_name": "OXI",
        "path": "SERVICES/PACS/OXI/1-x-/S-A-20130308/00005-D-a27cf06",
        "ndicom": 192,
        "PatientName": "anonymized",
        "PatientBirthDate": "20090701",
        "PatientAge": 1096,
        "PatientSex": "M",
        "AccessionNumber": None,
        "Modality": "MR",
        "ProtocolName": None,
        "StudyDescription": None,
        "SeriesDescription": None,
    }
    assert task_kwargs(_row(PatientAge=0), "x", 1)["PatientAge"] == 0  # 0 days is a value


@pytest.mark.parametrize(
    ("ae", "ok"),
    [
        ("OXITESTORTHANC", True),
        ("MY_PACS", True),
        ("PACS-1.2", True),
        ("MY PACS", False),
        ("A/B", False),
        ("A,B", False),
        ("A__B", False),
        ("PACS\u00e9", False),
    ],
)
def test_calling_ae_titles_cube_cannot_take_as_pacs_name_are_named(ae: str, ok: bool) -> None:
    assert (pacs_name_problem(ae) is None) is ok


def test_paths_cube_refuses() -> None:
    assert path_problem("SERVICES/PACS/OXI/a/b/c", "OXI") is None
    assert path_problem("SERVICES/PACS/OXI/a,b/c", "OXI") is not None
    assert path_problem("SERVICES/PACS/OTHER/a/b/c", "OXI") is not None


@pytest.mark.parametrize(
    ("raw", "seconds"), [("500ms", 0.5), ("2s", 2.0), ("1m 30s", 90.0), ("1h30m", 5400.0), ("250 ms", 0.25)]
)
def test_durations_in_oxidicoms_humantime_syntax(raw: str, seconds: float) -> None:
    assert duration("OXIDICOM_PROGRESS_INTERVAL", raw) == pytest.approx(seconds)


@pytest.mark.parametrize("raw", ["", "5", "1.5s", "2 fortnights", "ms"])
def test_bad_durations_name_the_setting(raw: str) -> None:
    with pytest.raises(SettingsError, match="OXIDICOM_PROGRESS_INTERVAL"):
        duration("OXIDICOM_PROGRESS_INTERVAL", raw)


def test_nats_addresses_as_oxidicom_takes_them() -> None:
    assert nats_address("OXIDICOM_NATS_ADDRESS", "nats:4222") == "nats://nats:4222"
    assert nats_address("OXIDICOM_NATS_ADDRESS", "nats://127.0.0.1:4222") == "nats://127.0.0.1:4222"
    with pytest.raises(SettingsError, match="OXIDICOM_NATS_ADDRESS"):
        nats_address("OXIDICOM_NATS_ADDRESS", "http://x:1")


def test_celery_registration_needs_a_broker_and_reads_the_older_name_too() -> None:
    with pytest.raises(SettingsError, match="OXIDICOM_CELERY_BROKER: required"):
        settings_mod.load({"OXIDICOM_REGISTRATION": "celery"})
    with pytest.raises(SettingsError, match="OXIDICOM_CELERY_BROKER"):
        settings_mod.load({"OXIDICOM_REGISTRATION": "celery", "OXIDICOM_CELERY_BROKER": "http://x"})
    s = settings_mod.load({"OXIDICOM_REGISTRATION": "celery", "OXIDICOM_AMQP_ADDRESS": "amqp://u:p@mq:5672"})
    assert (s.celery_broker, s.queue_name, s.db_schema, s.celery) == ("amqp://u:p@mq:5672", "main2", "oxidicom", True)
    assert settings_mod.unknown_variables({"OXIDICOM_AMQP_ADDRESS": "amqp://x"}) == []
    with pytest.raises(SettingsError, match="OXIDICOM_AMQP_ADDRESS"):
        settings_mod.load({"OXIDICOM_CELERY_BROKER": "redis://a:1", "OXIDICOM_AMQP_ADDRESS": "redis://b:1"})
    both = settings_mod.load({"OXIDICOM_REGISTRATION": "both", "OXIDICOM_CELERY_BROKER": "redis://a:1/0"})
    assert both.db_schema == "public"  # rows go to CUBE v5's tables as before
    assert settings_mod.load({}).registration == "postgres" and not settings_mod.load({}).celery


def test_the_schema_is_put_in_the_connection_string() -> None:
    uri = "postgresql://postgres@/postgres?host=/tmp/x"
    assert with_schema(uri, "public") == uri
    scoped = with_schema(uri, "oxidicom")
    assert "search_path=oxidicom" in scoped and with_schema(scoped, "oxidicom") == scoped
