"""Who we are on the network and in the files we write."""

IMPLEMENTATION_CLASS_UID = "2.25.140853228726626055459019420188694409802"
"""Announced in every A-ASSOCIATE-AC and A-ASSOCIATE-RQ and written into every file meta."""
IMPLEMENTATION_VERSION_NAME = "OXIDICOM_PY_01"
MARKER_PACS = "org.fnndsc.oxidicom"
"""The pseudo-PACS under which marker files (counts, push counts) are stored and registered."""
