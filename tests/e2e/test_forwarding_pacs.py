"""A PACS that forwards each instance as it arrives (Orthanc's Lua ``OnStoredInstance`` →
``SendToModality``, as hospital routers do): asked at the series' first instance, it answers the
count it holds at that moment. The receiver asks again when more arrive than it said, and once
more at the association's end, so the series ends complete with the real count."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pydicom
import pytest
from harness import LOOPBACK, load_script, marker_values, query, wait_until
from peers import Orthanc, ServeProcess

pytestmark = pytest.mark.integration

AET = "OXIROUTER"
SLICES = 192

_LUA = """
function OnStoredInstance(instanceId, tags, metadata, origin)
  SendToModality(instanceId, 'OXI')
end
"""


def test_a_series_forwarded_instance_by_instance_ends_once_complete_with_the_real_count(
    tmp_path: Path, db_uri: str
) -> None:
    files = load_script("synthetic").generate(tmp_path / "src", slices=SLICES, rows=32, cols=32, seed=12)
    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    lua = tmp_path / "route.lua"
    lua.write_text(_LUA)
    # DicomAssociationCloseDelay 5 s (Orthanc's default): the forwards share one association,
    # which Orthanc closes 5 s after the last one
    with Orthanc(tmp_path / "orthanc", aet=AET, LuaScripts=[str(lua)], DicomAssociationCloseDelay=5) as orthanc:
        env = {
            "OXIDICOM_DB_CONNECTION": db_uri,
            "OXIDICOM_FILES_ROOT": str(tmp_path / "files"),
            "OXIDICOM_SCP_AET": "OXIDICOMTEST",
            "OXIDICOM_PACS_ADDRESS": f'{{{AET}="{LOOPBACK}:{orthanc.dicom_port}"}}',
        }
        with ServeProcess(env, tmp_path) as rx:
            orthanc.add_modality("OXI", "OXIDICOMTEST", rx.port)
            watch = subprocess.Popen(
                [sys.executable, "-m", "oxidicom_py", "watch", "--series", uid, "--plain", "--timeout", "180"],
                env={**rx.env},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            watched: dict[str, str] = {}
            reader = threading.Thread(
                target=lambda: watched.update(zip(("out", "err"), watch.communicate(timeout=200), strict=True))
            )
            reader.start()
            assert orthanc.upload(files) == SLICES  # each stored instance is forwarded at once
            reader.join(200)
            assert watch.returncode == 0, watched
            assert f"{SLICES}/{SLICES} complete" in watched["out"], watched["out"]
            wait_until(lambda: marker_values(db_uri, uid, "OxidicomAttemptedPushCount"), 30, what="the push count")
            progress = query(db_uri, 'SELECT * FROM oxidicom_series_progress WHERE "SeriesInstanceUID" = %s', uid)
        ended = [line for line in rx.lines if line.get("msg") == "series ended" and line["SeriesInstanceUID"] == uid]
        asked = [line for line in rx.lines if str(line.get("msg", "")).startswith("NumberOfSeriesRelatedInstances=")]
    (row,) = progress
    assert (row["received"], row["expected"], row["state"], row["end_reason"]) == (SLICES, SLICES, "complete", "count")
    assert 2 <= row["count_queries"] <= 1 + 3, row["count_queries"]  # asked again, within the bound
    assert row["count_asked"] is not None
    counts = marker_values(db_uri, uid, "NumberOfSeriesRelatedInstances")
    assert counts[-1] == str(SLICES) and int(counts[0]) < SLICES, counts  # the first answer was too small
    assert marker_values(db_uri, uid, "OxidicomAttemptedPushCount") == [str(SLICES)]
    assert [(line["state"], line["reason"]) for line in ended] == [("complete", "count")]  # once, at the end
    assert (
        int(asked[0]["msg"].split("=")[1]) < SLICES and asked[-1]["msg"] == f"NumberOfSeriesRelatedInstances={SLICES}"
    )
