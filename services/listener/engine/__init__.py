"""An event-driven DICOM upper-layer engine for the listener's SCP side.

pynetdicom's association reactor polls (1 ms per loop) and hands every message across threads, which
caps a storage SCP at a fraction of dcmtk's speed. This package speaks the same protocol on one
asyncio loop: pynetdicom's PDU classes encode and decode the association PDUs, P-DATA and DIMSE
command sets are framed here, and the blocking store work (write, fsync, index) runs in a thread
pool so that other associations keep flowing.

- :mod:`.pdu`: PDU framing, P-DATA fragments, association PDU codecs.
- :mod:`.dimse`: DIMSE command sets (implicit VR little endian, group 0000).
- :mod:`.association`: one connection's state machine (an :class:`asyncio.Protocol`).
- :mod:`.config`: :class:`EngineConfig` (ports, timeouts, limits, TLS), from the listener's settings.
- :mod:`.server`: the loop in its own thread, plain and TLS ports, the association limit.
"""

from hounsfield.listener.engine.config import EngineConfig
from hounsfield.listener.engine.server import DicomServer

__all__ = ["DicomServer", "EngineConfig"]
