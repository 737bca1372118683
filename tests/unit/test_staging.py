"""Staging per receiver instance: names without PIDs, each instance cleaning only its own folder,
clean-ups that tolerate files vanishing under them (another host renaming or reaping)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from oxidicom_py.cluster_settings import default_instance_id
from oxidicom_py.settings import SettingsError, load
from oxidicom_py.storage import writer
from oxidicom_py.storage.writer import FilesRoot, remove_staged, staging_folder


def _staged(root: Path) -> list[Path]:
    return sorted((root / ".oxidicom-staging").rglob("*.part"))


def test_each_instance_and_process_stages_in_its_own_folder_with_names_free_of_pids(tmp_path: Path) -> None:
    a0 = FilesRoot(tmp_path, fsync=False, instance="r1", process="w0")
    b0 = FilesRoot(tmp_path, fsync=False, instance="r2", process="w0")  # same worker index, other host
    a0_again = FilesRoot(tmp_path, fsync=False, instance="r1", process="w0")  # the worker's replacement
    files = [a0.stage(b"x"), b0.stage(b"y"), a0_again.stage(b"z")]
    paths = [Path(f.path) for f in files]
    assert [p.parent for p in paths] == [
        staging_folder(tmp_path.resolve(), "r1", "w0"),
        staging_folder(tmp_path.resolve(), "r2", "w0"),
        staging_folder(tmp_path.resolve(), "r1", "w0"),
    ]
    assert len({p.name for p in paths}) == 3  # equal counters, distinct tokens
    assert all(str(os.getpid()) not in p.name.split("-")[0] for p in paths)
    for f in files:
        f.close()


def test_start_up_clean_removes_only_this_instances_files(tmp_path: Path) -> None:
    mine = FilesRoot(tmp_path, fsync=False, instance="r1", process="w1")
    theirs = FilesRoot(tmp_path, fsync=False, instance="r2", process="w0")
    mine.stage(b"a").close()
    in_flight = theirs.stage(b"b")  # the other host is receiving this one right now
    in_flight.write(b"more")
    restarted = FilesRoot(tmp_path, fsync=False, instance="r1", process="main")
    assert restarted.clean_instance() == 1
    assert _staged(tmp_path) == [Path(in_flight.path)]
    in_flight.commit("SERVICES/PACS/X/file.dcm")  # the other host still publishes it
    assert (tmp_path / "SERVICES/PACS/X/file.dcm").read_bytes() == b"bmore"


def test_a_dead_workers_clean_up_leaves_its_siblings_files(tmp_path: Path) -> None:
    w0 = FilesRoot(tmp_path, fsync=False, instance="r1", process="w0")
    w1 = FilesRoot(tmp_path, fsync=False, instance="r1", process="w1")
    w0.stage(b"dead").close()
    alive = w1.stage(b"alive")
    assert w1.clean_process("w0") == 1
    assert _staged(tmp_path) == [Path(alive.path)]
    assert w0.staging.is_dir()  # kept for the replacement
    alive.close()


def test_clean_up_tolerates_files_that_vanish_meanwhile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = FilesRoot(tmp_path, fsync=False, instance="r1", process="w0")
    for _ in range(3):
        root.stage(b"x").close()
    real_unlink = os.unlink
    calls = []

    def racing_unlink(path: str) -> None:  # another host renamed the first one away first
        calls.append(path)
        real_unlink(path)
        if len(calls) == 1:
            raise FileNotFoundError(2, "No such file or directory", path)

    monkeypatch.setattr(writer.os, "unlink", racing_unlink)
    assert remove_staged(root.instance_staging) == 2
    assert not root.instance_staging.exists()
    assert remove_staged(root.instance_staging) == 0  # gone already: no error


def test_staging_into_a_reaped_folder_makes_it_again(tmp_path: Path) -> None:
    root = FilesRoot(tmp_path, fsync=False, instance="r1", process="w0")
    remove_staged(root.instance_staging)  # another instance judged us stale
    staged = root.stage(b"x")
    staged.commit("SERVICES/PACS/X/a.dcm")
    assert (tmp_path / "SERVICES/PACS/X/a.dcm").read_bytes() == b"x"


def test_old_layout_leftovers_go_once_old_enough(tmp_path: Path) -> None:
    root = FilesRoot(tmp_path, fsync=False, instance="r1")
    old = root.staging_root / "4-96.part"
    new = root.staging_root / "5-12.part"
    old.write_bytes(b"old")
    new.write_bytes(b"new")
    hour_ago = time.time() - 3600
    os.utime(old, (hour_ago, hour_ago))
    assert root.clean_instance(legacy_older_than=60) == 1
    assert not old.exists() and new.exists()


def test_instance_id_setting() -> None:
    assert load({}).instance == default_instance_id(11111)
    assert load({"OXIDICOM_LISTENER_PORT": "104"}).instance.endswith("-104")
    assert not load({}).clustered
    s = load({"OXIDICOM_INSTANCE_ID": "oxidicom-0"})
    assert (s.instance, s.clustered) == ("oxidicom-0", True)
    for bad in ("", "a/b", "../x", "x" * 64, ".hidden"):
        with pytest.raises(SettingsError, match="OXIDICOM_INSTANCE_ID"):
            load({"OXIDICOM_INSTANCE_ID": bad})
    assert load({"OXIDICOM_INSTANCE_STALE_AFTER": "5"}).instance_stale_after == 5.0


def test_an_incremental_reconciliation_lists_only_series_folders_changed_since_the_watermark(tmp_path: Path) -> None:
    from oxidicom_py.registry.reconcile import _folders_with_instances

    old = tmp_path / "SERVICES/PACS/P/patient/study/old-series"
    new = tmp_path / "SERVICES/PACS/P/patient/study/new-series"
    for folder in (old, new):
        folder.mkdir(parents=True)
        (folder / "0001-1.dcm").write_bytes(b"x")
    hour_ago = time.time() - 3600
    os.utime(old, (hour_ago, hour_ago))
    every = [folder for folder, _files in _folders_with_instances(tmp_path)]
    assert every == ["SERVICES/PACS/P/patient/study/new-series", "SERVICES/PACS/P/patient/study/old-series"]
    changed = [folder for folder, _files in _folders_with_instances(tmp_path, since=time.time() - 60)]
    assert changed == ["SERVICES/PACS/P/patient/study/new-series"]
    assert list(_folders_with_instances(tmp_path, older_than=time.time() - 60)) == []  # too young, both
