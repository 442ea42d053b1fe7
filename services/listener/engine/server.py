"""The engine's server: one asyncio loop in its own thread, a plain port and optionally a TLS port.

:meth:`DicomServer.start` binds the ports (raising at once when it cannot) and returns; every
association then runs on the loop, and the blocking store work on a thread pool. :meth:`stop`
aborts what is still connected, lets store jobs already running finish, and joins the thread.

The TLS port accepts plain TCP connections and each :class:`Association` does its own TLS handshake
on them, so that a connection counts against the limits from its first byte and a failed handshake
is logged and counted (asyncio's own TLS servers drop those silently). In TLS-only mode the plain
port serves the loopback interface alone.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import ssl
import threading
from collections.abc import Callable
from typing import Any, Literal

from pydicom._uid_dict import UID_dictionary
from pydicom.uid import MediaStorageDirectoryStorage
from pynetdicom import AllStoragePresentationContexts
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    _NON_PATIENT_OBJECT_CLASSES,
    _STORAGE_CLASSES,
    Verification,
)

from hounsfield.dicom_syntaxes import preference_order
from hounsfield.listener.engine.association import Association, EngineState
from hounsfield.listener.engine.config import EngineConfig, tls_context
from hounsfield.listener.journal import JournalRefused
from hounsfield.listener.policy import AssociationPolicy
from hounsfield.listener.storage import StoreContext

__all__ = ["DicomServer"]

logger = logging.getLogger(__name__)


def _storage_syntaxes() -> frozenset[str]:
    """Verification and every storage SOP class, retired ones included (old modalities still send them).

    pynetdicom's storage classes plus every "... Storage" SOP class in pydicom's UID dictionary,
    less the Media Storage Directory (DICOMDIR, never sent by C-STORE) and the non-patient objects
    (hanging protocols, palettes, implant templates...), which carry no study to store.
    """
    excluded = {str(MediaStorageDirectoryStorage), *map(str, _NON_PATIENT_OBJECT_CLASSES.values())}
    syntaxes = {str(Verification), *map(str, _STORAGE_CLASSES.values())}
    for context in AllStoragePresentationContexts:
        assert context.abstract_syntax is not None
        syntaxes.add(str(context.abstract_syntax))
    for key, (name, kind, *_rest) in UID_dictionary.items():
        if kind == "SOP Class" and name.endswith("Storage"):
            syntaxes.add(str(key))
    return frozenset(syntaxes - excluded)


class _DropCodecTracebacks(logging.Filter):
    """pynetdicom's codecs log a traceback for each non-ASCII AE title or UID they decode.

    The engine reports the malformed PDU itself, in one line with the peer's address, so those
    records would only repeat it (and could echo the peer's bytes into the log).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], UnicodeError))


def _quiet_codec_logs() -> None:
    codec_logger = logging.getLogger("pynetdicom.utils")
    if not any(isinstance(f, _DropCodecTracebacks) for f in codec_logger.filters):
        codec_logger.addFilter(_DropCodecTracebacks())


class DicomServer:
    """The listener's DICOM ports, served by :class:`Association` protocols on a private loop."""

    def __init__(self, config: EngineConfig, policy: AssociationPolicy, store: StoreContext) -> None:
        self.config = config
        self._policy = policy
        self._store = store
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[asyncio.Server] = []
        self._state: EngineState | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._watching: Callable[[int, JournalRefused | None], None] | None = None

    @property
    def ports(self) -> list[int]:
        """The bound ports (the plain one first), useful when the configuration asked for port 0."""
        return [server.sockets[0].getsockname()[1] for server in self._servers if server.sockets]

    def start(self) -> None:
        """Bind and serve in a background thread; raises :class:`OSError` when a port cannot be bound."""
        tls = tls_context(self.config.tls) if self.config.tls is not None else None
        _quiet_codec_logs()
        self._executor = concurrent.futures.ThreadPoolExecutor(self.config.workers, thread_name_prefix="dicom-store")
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(_quiet_exceptions)
        self._thread = threading.Thread(target=self._loop.run_forever, name="dicom-engine", daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._serve(tls), self._loop).result(timeout=30)
        except BaseException:
            self.stop()
            raise

    async def _serve(self, tls: ssl.SSLContext | None) -> None:
        assert self._executor is not None
        self._state = EngineState(
            config=self.config,
            policy=self._policy,
            store=self._store,
            executor=self._executor,
            abstract_syntaxes=_storage_syntaxes() | set(self.config.private_sop_classes),
            transfer_syntaxes=preference_order(self.config.transfer_syntaxes),
        )
        loop = asyncio.get_running_loop()
        state = self._state
        if self._store.journal is not None:

            def durable(seq: int, error: JournalRefused | None) -> None:  # on the journal's sync thread
                loop.call_soon_threadsafe(state.durable, seq, error)

            self._watching = durable
            self._store.journal.journal.watch(durable)

        def plain() -> Association:
            return Association(state, "dimse")

        def secure() -> Association:
            assert tls is not None
            return Association(state, "dimse-tls", tls=tls)

        kwargs: dict[str, Any] = {"reuse_address": True, "backlog": 128}
        plain_host = self.config.host
        if self.config.tls is not None and self.config.tls.only:
            plain_host = "127.0.0.1"  # TLS only: the pod's own readiness C-ECHO, nothing from the network
        self._servers.append(await loop.create_server(plain, plain_host, self.config.port, **kwargs))
        if tls is not None and self.config.tls is not None:
            self._servers.append(await loop.create_server(secure, self.config.host, self.config.tls.port, **kwargs))

    async def _shutdown(self) -> None:
        for server in self._servers:
            server.close()
        if self._state is not None:
            for association in list(self._state.live):
                association.abort("the listener is stopping")
        for server in self._servers:
            await server.wait_closed()
        await asyncio.sleep(0)  # let the closing transports run connection_lost

    def stop(self) -> None:
        """Close the ports and connections, wait for running store jobs, stop the loop."""
        if self._watching is not None and self._store.journal is not None:
            self._store.journal.journal.unwatch(self._watching)
            self._watching = None
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=30)
            except (TimeoutError, concurrent.futures.TimeoutError):
                logger.warning("the DICOM server did not close its connections within 30 s")
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        if self._loop is not None:
            loop = self._loop
            if self._thread is not None and self._thread.is_alive():
                loop.call_soon_threadsafe(loop.stop)
                self._thread.join(timeout=10)
            if not loop.is_running():
                loop.close()
        self._servers.clear()
        self._loop = self._thread = self._executor = None


_QUIET: tuple[type[BaseException], ...] = (ssl.SSLError, ConnectionError, TimeoutError)


def _quiet_exceptions(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """TLS errors and reset connections are the peer's business: one line, no traceback."""
    error = context.get("exception")
    if isinstance(error, _QUIET):
        kind: Literal["tls", "connection"] = "tls" if isinstance(error, ssl.SSLError) else "connection"
        logger.warning("%s error from a peer: %s", kind, error)
        return
    loop.default_exception_handler(context)
