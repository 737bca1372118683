"""Which presentation contexts the receiver accepts: SOP classes and transfer syntaxes."""

from __future__ import annotations

from functools import cache

from pydicom._uid_dict import UID_dictionary

VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"

# Private SOP classes the reference accepts besides the standard storage classes.
SIEMENS_PRIVATE_STORAGE = (
    "1.3.12.2.1107.5.99.3.11",  # Siemens AX Frame Sets
    "1.3.12.2.1107.5.9.1",  # Siemens CSA Non-Image
    "1.3.12.2.1107.5.99.3.10",  # Siemens CT MR Volume
)

# Transfer syntaxes we cannot store as received: deflated ones (the header cannot be read
# without inflating the whole stream) and the non-network encodings.
_NOT_ACCEPTED_TS = {
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.4.95",  # JPIP Referenced Deflate
    "1.2.840.10008.1.2.4.205",  # JPIP HTJ2K Referenced Deflate
    "1.2.840.10008.1.2.6.1",  # RFC 2557 MIME encapsulation
    "1.2.840.10008.1.2.6.2",  # XML encoding
    "1.2.840.10008.1.20",  # Papyrus 3 (retired, not a network syntax)
}


@cache
def storage_sop_classes() -> frozenset[str]:
    """Every standard '... Storage' SOP class in pydicom's dictionary, plus Siemens' private ones."""
    std = {
        uid for uid, (name, kind, *_rest) in UID_dictionary.items() if kind == "SOP Class" and name.endswith("Storage")
    }
    return frozenset(std | set(SIEMENS_PRIVATE_STORAGE))


@cache
def accepted_transfer_syntaxes(uncompressed_only: bool) -> frozenset[str]:
    if uncompressed_only:
        return frozenset({IMPLICIT_VR_LE, EXPLICIT_VR_LE})
    return frozenset(
        uid
        for uid, (_name, kind, *_rest) in UID_dictionary.items()
        if kind == "Transfer Syntax" and uid not in _NOT_ACCEPTED_TS
    )


def dataset_encoding(transfer_syntax: str) -> tuple[bool, bool]:
    """(implicit_vr, little_endian) of the dataset encoded in ``transfer_syntax``."""
    if transfer_syntax == IMPLICIT_VR_LE:
        return True, True
    if transfer_syntax == EXPLICIT_VR_BE:
        return False, False
    return False, True
