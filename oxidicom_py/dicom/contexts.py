"""Which presentation contexts the receiver accepts: SOP classes and transfer syntaxes."""

from __future__ import annotations

from functools import cache

from pydicom._uid_dict import UID_dictionary

from oxidicom_py.dicom.storage_classes import STANDARD_STORAGE_CLASSES, STANDARD_TRANSFER_SYNTAXES

VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"

# Private SOP classes the reference accepts besides the standard storage classes.
SIEMENS_PRIVATE_NAMES = {
    "1.3.12.2.1107.5.99.3.11": "Siemens AX Frame Sets Storage (private)",
    "1.3.12.2.1107.5.9.1": "Siemens CSA Non-Image Storage (private)",
    "1.3.12.2.1107.5.99.3.10": "Siemens CT MR Volume Storage (private)",
}
SIEMENS_PRIVATE_STORAGE = tuple(SIEMENS_PRIVATE_NAMES)

# Transfer syntaxes we cannot store as received: deflated ones (the header cannot be read
# without inflating the whole stream) and the non-network encodings.
NOT_ACCEPTED_TRANSFER_SYNTAXES = {
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.4.95",  # JPIP Referenced Deflate
    "1.2.840.10008.1.2.4.205",  # JPIP HTJ2K Referenced Deflate
    "1.2.840.10008.1.2.6.1",  # RFC 2557 MIME encapsulation
    "1.2.840.10008.1.2.6.2",  # XML encoding
    "1.2.840.10008.1.20",  # Papyrus 3 (retired, not a network syntax)
    "1.2.840.10008.1.2.7.1",  # SMPTE ST 2110-20 video: DICOM-RTV, real-time streams, not storage
    "1.2.840.10008.1.2.7.2",  # SMPTE ST 2110-20 interlaced video (DICOM-RTV)
    "1.2.840.10008.1.2.7.3",  # SMPTE ST 2110-30 audio (DICOM-RTV)
}


# SOP classes with "Storage" in their name that are not C-STORE storage classes.
_NOT_STORAGE = ("Storage Commitment", "Storage Service Class", "Storage Management", "Media Storage Directory")
DICOMDIR = "1.2.840.10008.1.3.10"
"""Media Storage Directory: a media object (PS3.10), never a network storage class."""


def is_storage_class(name: str, kind: str) -> bool:
    """Whether a UID registry entry is a storage SOP class (PS3.4 Annex B), from its name.

    Matches "... Storage", "... Storage - For Presentation", "... Storage - Trial" and the
    retired print storage classes; excludes Storage Commitment and the like.
    """
    return kind == "SOP Class" and "Storage" in name and not any(x in name for x in _NOT_STORAGE)


@cache
def storage_sop_classes() -> frozenset[str]:
    """Every storage SOP class we accept without promiscuous mode.

    The vendored table of the standard's classes (:mod:`storage_classes`, so that no pydicom
    release can drop one), any newer one the installed pydicom knows, and Siemens' private ones.
    """
    installed = {uid for uid, (name, kind, *_rest) in UID_dictionary.items() if is_storage_class(name, kind)}
    return frozenset(set(STANDARD_STORAGE_CLASSES) | installed | set(SIEMENS_PRIVATE_STORAGE))


def sop_class_name(uid: str) -> str:
    """A readable name for a SOP class UID (the UID itself when unknown)."""
    if uid in STANDARD_STORAGE_CLASSES:
        return STANDARD_STORAGE_CLASSES[uid][0]
    entry = UID_dictionary.get(uid)
    if entry is not None:
        return entry[0]
    return SIEMENS_PRIVATE_NAMES.get(uid, uid)


@cache
def accepted_transfer_syntaxes(uncompressed_only: bool) -> frozenset[str]:
    if uncompressed_only:
        return frozenset({IMPLICIT_VR_LE, EXPLICIT_VR_LE})
    return frozenset(uid for uid in STANDARD_TRANSFER_SYNTAXES if uid not in NOT_ACCEPTED_TRANSFER_SYNTAXES)


def dataset_encoding(transfer_syntax: str) -> tuple[bool, bool]:
    """(implicit_vr, little_endian) of the dataset encoded in ``transfer_syntax``."""
    if transfer_syntax == IMPLICIT_VR_LE:
        return True, True
    if transfer_syntax == EXPLICIT_VR_BE:
        return False, False
    return False, True
