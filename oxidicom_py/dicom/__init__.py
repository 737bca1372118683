"""The DICOM protocol without I/O: PDU and DIMSE codecs, presentation contexts, association
admission, and the acceptor's state machine. Nothing here imports asyncio, socket, ssl or
selectors, and nothing reads a clock: bytes and time in, events and bytes out."""
