"""A minimal pynetdicom C-STORE SCP, "raw" mode: write preamble + file meta + the received
dataset bytes, without decoding (environment.md, Appendix A).

    python bench/pyscp.py OUT_DIR PORT [MAX_PDU]

Listens on 127.0.0.1 only, AE title PYSCP, every storage SOP class in every transfer
syntax, plus Verification. Files are ``OUT_DIR/<SOPInstanceUID>.dcm``.
"""

from __future__ import annotations

import os
import sys

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    outdir, port = argv[0], int(argv[1])
    pdu = int(argv[2]) if len(argv) > 2 else 16382
    _config.LOG_HANDLER_LEVEL = "none"
    os.makedirs(outdir, exist_ok=True)

    def handle_store(event: Event) -> int:
        path = os.path.join(outdir, f"{event.request.AffectedSOPInstanceUID}.dcm")
        with open(path, "wb") as f:
            f.write(event.encoded_dataset())
        return 0x0000

    ae = AE(ae_title="PYSCP")
    ae.maximum_pdu_size = pdu
    ae.maximum_associations = 32
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    ae.start_server(("127.0.0.1", port), block=True, evt_handlers=[(evt.EVT_C_STORE, handle_store)])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
