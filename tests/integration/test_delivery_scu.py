"""The delivery SCU against our own receiver: a compressed file for a destination that accepts
only uncompressed syntaxes is decompressed and sent (the pixels intact), never dropped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from harness import LOOPBACK, InProcessReceiver, load_script
from pydicom.uid import RLELossless

from oxidicom_py.delivery.store_scu import Outgoing, Target, send

pytestmark = pytest.mark.integration


def test_a_compressed_file_is_sent_uncompressed_to_a_destination_refusing_its_syntax(tmp_path: Path) -> None:
    (source,) = load_script("synthetic").generate(tmp_path / "src", slices=1, rows=16, cols=16, seed=61)
    ds = pydicom.dcmread(source)
    pixels = ds.pixel_array.copy()
    ds.compress(RLELossless, generate_instance_uid=False)
    rle = tmp_path / "rle.dcm"
    ds.save_as(rle, enforce_file_format=True)
    outgoing = [Outgoing(str(ds.SOPInstanceUID), str(ds.SOPClassUID), rle)]
    with InProcessReceiver(tmp_path / "files", uncompressed_only=True) as rx:
        acked: list[tuple[str, int]] = []
        outcome = send(Target("OXITEST", LOOPBACK, rx.port, "SENDER"), outgoing, lambda s, c: acked.append((s, c)))
        assert outcome.error is None and not outcome.failed, outcome
        assert acked == [(str(ds.SOPInstanceUID), 0)]
        (stored,) = rx.stored()
    got = pydicom.dcmread(stored)
    assert not got.file_meta.TransferSyntaxUID.is_compressed  # whichever uncompressed syntax it accepted
    assert np.array_equal(got.pixel_array, pixels)
