"""One connection's association, as an :class:`asyncio.Protocol` (the acceptor side of PS3.8).

States: waiting for the A-ASSOCIATE-RQ, established, releasing, closed. Bytes are framed into PDUs
as they arrive; a PDU header is checked before its body is collected, so a header that claims
gigabytes is refused at once.

Until the caller is identified (its A-ASSOCIATE-RQ decided) a connection is *pending*: pending
connections are capped in all and per address, must send a whole A-ASSOCIATE-RQ (after the TLS
handshake, on the TLS port) within ``request_timeout_s``, and may send nothing else, of at most
:data:`_MAX_REQUEST_PDU` bytes, so that each costs a few kilobytes whoever opens them. Established
associations are capped in all and per address, and one waiting for its peer is aborted when no
whole PDU has arrived for ``network_timeout_s``: a byte now and then does not hold a slot.

P-DATA fragments are collected per message (command, then dataset); a complete C-STORE goes to the
thread pool for the store's blocking work and its response is sent when that finishes. One
association's messages are handled strictly in order; other associations keep flowing while a store
fsyncs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import heapq
import itertools
import logging
import ssl
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

from hounsfield.dicom_status import Status, is_stored
from hounsfield.listener.engine.config import EngineConfig
from hounsfield.listener.engine.dimse import (
    C_CANCEL_RQ,
    C_ECHO_RQ,
    C_STORE_RQ,
    Command,
    CommandUndecodable,
    decode_command,
    encode_response,
)
from hounsfield.listener.engine.pdu import (
    APPLICATION_CONTEXT,
    HEADER,
    AbortReason,
    AssociateRequest,
    ContextResult,
    NegotiatedContext,
    PDUType,
    ProtocolViolation,
    decode_associate_rq,
    encode_abort,
    encode_associate_ac,
    encode_associate_rj,
    encode_pdata,
    encode_release_rp,
    iter_pdvs,
)
from hounsfield.listener.engine.spool import DatasetSink
from hounsfield.listener.journal import JournalBusy, JournalRefused
from hounsfield.listener.policy import AssociationPolicy
from hounsfield.listener.storage import (
    Origin,
    Received,
    SpooledDataset,
    StoreContext,
    part10_prefix,
    receive_instance,
)
from hounsfield.logs import Throttle

__all__ = ["Association", "EngineState", "negotiate_contexts"]

logger = logging.getLogger(__name__)

_MAX_CONTROL_PDU = 1 << 20
"""Largest non-P-DATA PDU accepted on an established association."""
_MAX_REQUEST_PDU = 64 << 10
"""Largest A-ASSOCIATE-RQ accepted (one with 128 presentation contexts is about 15 KiB)."""
_ABSURD_PDU = 256 << 20


@dataclass
class EngineState:
    """What every association of one server shares: settings, collaborators, the live set."""

    config: EngineConfig
    policy: AssociationPolicy
    store: StoreContext
    executor: concurrent.futures.Executor
    abstract_syntaxes: frozenset[str]
    transfer_syntaxes: Mapping[str, int]
    """Each accepted transfer syntax's rank, lower is better (:func:`~hounsfield.dicom_syntaxes.preference_order`)."""
    live: set[Association] = field(default_factory=set)
    established: int = 0
    established_by_address: Counter[str] = field(default_factory=Counter)
    pending: int = 0
    """Connections whose caller is not identified yet."""
    pending_by_address: Counter[str] = field(default_factory=Counter)
    keys: itertools.count[int] = field(default_factory=itertools.count)
    dropped_log: Throttle = field(default_factory=Throttle)
    """Connections closed at once by the limits: a flood of them logs a few lines a minute."""
    handshake_log: Throttle = field(default_factory=Throttle)
    awaiting_durability: list[tuple[int, int, Callable[[JournalRefused | None], None]]] = field(default_factory=list)
    """A heap of (journal record, order, answer): Successes to send once their record is durable."""
    order: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def spool_dir(self) -> Path:
        return self.store.store.spool_dir

    def when_durable(self, seq: int, answer: Callable[[JournalRefused | None], None]) -> None:
        """Call ``answer(None)`` on the loop once journal record ``seq`` is durable (``answer(error)`` if
        the journal fails first); the journal's sync thread does the ``fdatasync``, shared by everyone."""
        journal = self.store.journal
        assert journal is not None
        heapq.heappush(self.awaiting_durability, (seq, next(self.order), answer))
        journal.journal.sync_soon(seq)

    def durable(self, durable: int, error: JournalRefused | None) -> None:
        """The journal's news (on the loop): answer everything durable now, or everything, on failure."""
        waiting = self.awaiting_durability
        while waiting and (error is not None or waiting[0][0] <= durable):
            _, _, answer = heapq.heappop(waiting)
            answer(error)


def negotiate_contexts(
    request: AssociateRequest, abstract_syntaxes: frozenset[str], transfer_syntaxes: Mapping[str, int]
) -> list[NegotiatedContext]:
    """Accept each context whose abstract syntax we serve, with the best-ranked syntax it proposes.

    The listener's preference decides, not the order of the proposal: a sender that lists JPEG
    Baseline before Explicit VR Little Endian would otherwise compress lossy on the fly.
    """
    answers = []
    for proposed in request.contexts:
        if proposed.abstract_syntax not in abstract_syntaxes:
            answers.append(
                NegotiatedContext(
                    proposed.context_id, proposed.abstract_syntax, ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED
                )
            )
            continue
        offered = [syntax for syntax in proposed.transfer_syntaxes if syntax in transfer_syntaxes]
        chosen = min(offered, key=transfer_syntaxes.__getitem__, default="")
        result = ContextResult.ACCEPTANCE if chosen else ContextResult.TRANSFER_SYNTAXES_NOT_SUPPORTED
        answers.append(NegotiatedContext(proposed.context_id, proposed.abstract_syntax, result, chosen))
    return answers


@dataclass
class _Message:
    """One DIMSE message as it is being received or waits for its turn."""

    context: NegotiatedContext
    command: Command
    sink: DatasetSink | None = None
    dataset: bytearray | SpooledDataset | None = None


class Association(asyncio.Protocol):
    """The acceptor's side of one connection (plain TCP or TLS, ``transport_name`` says which)."""

    def __init__(
        self, state: EngineState, transport_name: Literal["dimse", "dimse-tls"], *, tls: ssl.SSLContext | None = None
    ) -> None:
        self._state = state
        self._config = state.config
        self._transport_name: Literal["dimse", "dimse-tls"] = transport_name
        self._tls = tls
        self._certificate_names: frozenset[str] | None = None
        """The verified client certificate's names (subject CN, DNS SANs) after a TLS handshake."""
        self._pending = False
        self._lost = False
        self._early = bytearray()
        """Bytes the TLS layer delivered before :meth:`_handshake` had the secured transport in hand."""
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._phase: Literal["request", "established", "releasing", "closed"] = "request"
        self._peer = "?"
        self._request: AssociateRequest | None = None
        self._contexts: dict[int, NegotiatedContext] = {}
        self._peer_max_pdu = 0
        self._origin: Origin | None = None
        self._receiving: _Message | None = None
        self._command = bytearray()
        self._command_context = 0
        self._queue: deque[_Message] = deque()
        self._busy = False
        self._paused = False
        self._release_requested = False
        self._closing = False
        self._ended = False
        self._end_notice: Literal["released", "aborted"] | None = None
        self._moved = False
        """A C-STORE named a move originator: this association carries a C-MOVE's sub-operations."""
        self._refused = False
        """An instance of this association was refused: its sender will send it again, so a release does
        not complete its studies (the quiet period does)."""
        self._last_pdu = self._loop.time()
        self._artim: asyncio.TimerHandle | None = None
        self._idle: asyncio.TimerHandle | None = None
        self.instances = 0

    # -- transport callbacks -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if peer else "?"
        state, config = self._state, self._config
        if state.pending >= config.max_pending_connections:
            self._drop(f"{config.max_pending_connections} connections are waiting to associate")
            return
        if state.pending_by_address[self._peer] >= config.max_pending_per_address:
            self._drop(f"{config.max_pending_per_address} connections from this address are waiting to associate")
            return
        self._pending = True
        state.pending += 1
        state.pending_by_address[self._peer] += 1
        state.live.add(self)
        self._artim = self._loop.call_later(config.request_timeout_s, self._artim_expired)
        if self._tls is not None:
            transport.pause_reading()  # the ClientHello waits in the socket for the handshake
            self._loop.create_task(self._handshake(transport, self._tls))

    def _drop(self, why: str) -> None:
        """Close a connection the limits do not admit: no PDU, no state kept, a throttled log line."""
        self._closing = True
        self._count("dropped")
        allowed, held = self._state.dropped_log.allow()
        if allowed:
            more = f" ({held} more since the last such line)" if held else ""
            logger.warning("connection from %s closed at once: %s%s", self._peer, why, more)
        assert self._transport is not None
        self._transport.abort()

    async def _handshake(self, transport: asyncio.Transport, context: ssl.SSLContext) -> None:
        try:
            secured = await self._loop.start_tls(
                transport, self, context, server_side=True, ssl_handshake_timeout=self._config.request_timeout_s
            )
        except (OSError, TimeoutError, ConnectionError) as exc:  # ssl.SSLError is an OSError
            self._handshake_failed(TimeoutError() if self._closing else exc)  # closing: the request timer ran out
            transport.abort()
            self.connection_lost(None)  # Python's TLS layer does not always report a connection lost mid-handshake
            return
        if self._closing or secured is None:  # the request timer closed the connection during the handshake
            self._handshake_failed(TimeoutError())
            transport.abort()
            self.connection_lost(None)
            return
        self._transport = secured
        self._certificate_names = _certificate_names(secured.get_extra_info("peercert"))
        self._tls = None
        if self._early:
            early, self._early = bytes(self._early), bytearray()
            self.data_received(early)

    def _handshake_failed(self, exc: BaseException) -> None:
        kind = _handshake_failure(exc)
        allowed, held = self._state.handshake_log.allow()
        if allowed:
            more = f" ({held} more since the last such line)" if held else ""
            detail = getattr(exc, "reason", None) or type(exc).__name__
            logger.warning("TLS handshake from %s failed (%s: %s)%s", self._peer, kind, detail, more)
        metrics = self._state.store.metrics
        if metrics is not None:  # after the line: whoever sees the count finds the line written
            metrics.tls_handshake_failures.labels(kind).inc()

    def data_received(self, data: bytes) -> None:
        if self._tls is not None:
            # The handshake finished and application data came in the same read, before _handshake
            # resumed: the answer must go out through the secured transport, so it waits for it.
            self._early += data
            return
        if self._closing:
            return  # after A-ASSOCIATE-RJ, A-ABORT or A-RELEASE-RP nothing more is read
        try:
            if self._buffer:
                self._buffer += data
                consumed = self._parse(self._buffer)
                del self._buffer[:consumed]
            else:
                consumed = self._parse(data)
                if consumed < len(data):
                    self._buffer += memoryview(data)[consumed:]
        except ProtocolViolation as exc:
            self.abort(str(exc), exc.reason)

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return  # a failed TLS handshake ends here itself; the TLS layer may or may not tell us too
        self._lost = True
        was = self._phase
        self._phase = "closed"
        self._closing = True
        for timer in (self._artim, self._idle):
            if timer is not None:
                timer.cancel()
        self._leave_pending()
        self._state.live.discard(self)
        if self._receiving is not None and self._receiving.sink is not None:
            self._receiving.sink.discard()
        self._receiving = None
        for message in self._queue:
            _discard(message)
        self._queue.clear()
        if was in ("established", "releasing"):
            self._state.established -= 1
            self._state.established_by_address[self._peer] -= 1
            if not self._state.established_by_address[self._peer]:
                del self._state.established_by_address[self._peer]
            if self._end_notice is None:
                self._end_notice = "aborted"
                logger.info("association from %s (%s) ended without release", self._calling, self._peer)
        self._notify_end()

    # -- framing ---------------------------------------------------------------------------------------

    def _parse(self, data: bytes | bytearray) -> int:
        """Handle every whole PDU in ``data``; returns the bytes consumed."""
        offset, end = 0, len(data)
        with memoryview(data) as view:
            while end - offset >= 6 and not self._closing:
                pdu_type, length = HEADER.unpack_from(view, offset)
                self._check_length(pdu_type, length)
                if end - offset - 6 < length:
                    break
                body = view[offset + 6 : offset + 6 + length]
                self._last_pdu = self._loop.time()
                try:
                    if pdu_type == PDUType.P_DATA_TF:
                        self._on_pdata(body)
                    else:
                        self._on_control(pdu_type, view[offset : offset + 6 + length])
                finally:
                    body.release()
                offset += 6 + length
        return offset

    def _check_length(self, pdu_type: int, length: int) -> None:
        if self._phase == "request":
            # Before the caller is identified it may send an A-ASSOCIATE-RQ (or an A-ABORT), nothing else.
            if pdu_type not in (PDUType.ASSOCIATE_RQ, PDUType.ABORT_RQ):
                raise ProtocolViolation(f"PDU type {pdu_type:#04x} before A-ASSOCIATE-RQ", AbortReason.UNEXPECTED_PDU)
            if length > _MAX_REQUEST_PDU:
                raise ProtocolViolation(f"A-ASSOCIATE-RQ of {length} bytes", AbortReason.INVALID_PDU_PARAMETER)
            return
        if length > _ABSURD_PDU:
            raise ProtocolViolation(f"PDU claims {length} bytes", AbortReason.INVALID_PDU_PARAMETER)
        if pdu_type == PDUType.P_DATA_TF:
            # Peers count the maximum length differently (PDV items or PDU body): allow some slack.
            if length > 2 * self._config.max_pdu + 1024:
                raise ProtocolViolation(
                    f"P-DATA-TF of {length} bytes exceeds the negotiated maximum {self._config.max_pdu}",
                    AbortReason.INVALID_PDU_PARAMETER,
                )
        elif length > _MAX_CONTROL_PDU:
            raise ProtocolViolation(
                f"PDU type {pdu_type:#04x} claims {length} bytes", AbortReason.INVALID_PDU_PARAMETER
            )

    def _on_control(self, pdu_type: int, pdu: memoryview) -> None:
        if pdu_type == PDUType.ASSOCIATE_RQ:
            if self._phase != "request":
                raise ProtocolViolation("A-ASSOCIATE-RQ on an established association", AbortReason.UNEXPECTED_PDU)
            self._on_associate(decode_associate_rq(bytes(pdu)))
        elif pdu_type == PDUType.RELEASE_RQ:
            if self._phase != "established":
                raise ProtocolViolation("A-RELEASE-RQ outside an association", AbortReason.UNEXPECTED_PDU)
            self._on_release()
        elif pdu_type == PDUType.ABORT_RQ:
            logger.info("association from %s (%s) aborted by the peer", self._calling, self._peer)
            self._close()
        elif pdu_type in (PDUType.ASSOCIATE_AC, PDUType.ASSOCIATE_RJ, PDUType.RELEASE_RP):
            raise ProtocolViolation(f"unexpected PDU type {pdu_type:#04x} for an acceptor", AbortReason.UNEXPECTED_PDU)
        else:
            raise ProtocolViolation(f"unrecognized PDU type {pdu_type:#04x}", AbortReason.UNRECOGNIZED_PDU)

    # -- association establishment ---------------------------------------------------------------------

    @property
    def _calling(self) -> str:
        return self._request.calling_ae if self._request is not None else "?"

    def _leave_pending(self) -> None:
        if self._pending:
            self._pending = False
            self._state.pending -= 1
            self._state.pending_by_address[self._peer] -= 1
            if not self._state.pending_by_address[self._peer]:
                del self._state.pending_by_address[self._peer]

    def _on_associate(self, request: AssociateRequest) -> None:
        if self._artim is not None:
            self._artim.cancel()
            self._artim = None
        self._request = request
        if not request.protocol_version & 0x0001:
            self._reject(1, 2, 2, "protocol version not supported")
            return
        if request.application_context != APPLICATION_CONTEXT:
            self._reject(1, 1, 2, "application context name not supported")
            return
        if self._state.established >= self._config.max_associations:
            self._reject(2, 3, 2, f"local limit of {self._config.max_associations} associations reached")
            return
        if self._state.established_by_address[self._peer] >= self._config.max_associations_per_address:
            limit = self._config.max_associations_per_address
            self._reject(2, 3, 2, f"local limit of {limit} associations from this address reached")
            return
        decision = self._state.policy.decide(
            request.calling_ae, request.called_ae, self._peer, certificate_names=self._certificate_names
        )
        if not decision.accepted:
            assert decision.rejection is not None
            self._reject(1, 1, int(decision.rejection), decision.reason)
            return
        contexts = negotiate_contexts(request, self._state.abstract_syntaxes, self._state.transfer_syntaxes)
        self._contexts = {c.context_id: c for c in contexts if c.accepted}
        self._peer_max_pdu = request.max_pdu
        key = (self._transport_name, next(self._state.keys))
        self._origin = Origin(key, request.calling_ae, request.called_ae, self._transport_name)
        self._send(
            encode_associate_ac(
                request,
                contexts,
                max_pdu=self._config.max_pdu,
                implementation_class_uid=self._config.implementation_class_uid,
                implementation_version_name=self._config.implementation_version_name,
            )
        )
        self._leave_pending()  # a rejected connection stays pending until it is gone (it lingers, see _close)
        self._phase = "established"
        self._state.established += 1
        self._state.established_by_address[self._peer] += 1
        self._schedule_idle()
        self._count("accepted")
        logger.info(
            "association from %s (%s) to %s accepted over %s: %d of %d presentation contexts (%s)",
            request.calling_ae, self._peer, request.called_ae, self._transport_name,
            len(self._contexts), len(contexts), decision.reason,
        )  # fmt: skip

    def _count(self, outcome: Literal["accepted", "rejected", "dropped"]) -> None:
        metrics = self._state.store.metrics
        if metrics is not None:
            metrics.associations.labels(self._transport_name, outcome).inc()

    def _reject(self, result: int, source: int, reason: int, why: str) -> None:
        self._count("rejected")
        logger.warning(
            "association from %s (%s) to %s rejected (result %d, source %d, reason %d): %s",
            self._calling, self._peer, self._request.called_ae if self._request else "?", result, source, reason, why,
        )  # fmt: skip
        self._send(encode_associate_rj(result, source, reason))
        self._close(linger=True)

    # -- P-DATA ----------------------------------------------------------------------------------------

    def _on_pdata(self, body: memoryview) -> None:
        if self._phase != "established":
            raise ProtocolViolation("P-DATA-TF outside an established association", AbortReason.UNEXPECTED_PDU)
        for context_id, control, fragment in iter_pdvs(body):
            context = self._contexts.get(context_id)
            if context is None:
                raise ProtocolViolation(f"P-DATA on presentation context {context_id}, which is not accepted")
            if control & 0x01:
                self._on_command_fragment(context, fragment, last=bool(control & 0x02))
            else:
                self._on_dataset_fragment(context, fragment, last=bool(control & 0x02))

    def _on_command_fragment(self, context: NegotiatedContext, fragment: memoryview, *, last: bool) -> None:
        if self._receiving is not None:
            raise ProtocolViolation("a command fragment arrived while a dataset was expected")
        if self._command and context.context_id != self._command_context:
            raise ProtocolViolation("command fragments on different presentation contexts")
        self._command_context = context.context_id
        self._command += fragment
        if len(self._command) > _MAX_CONTROL_PDU:
            raise ProtocolViolation("command set larger than 1 MiB")
        if not last:
            return
        try:
            command = decode_command(self._command)
        except CommandUndecodable as exc:
            raise ProtocolViolation(f"undecodable command set: {exc}") from exc
        self._command = bytearray()
        message = _Message(context, command)
        if command.has_dataset:
            message.sink = self._sink(context, command)
            self._receiving = message
        else:
            self._dispatch(message)

    def _sink(self, context: NegotiatedContext, command: Command) -> DatasetSink:
        store = self._state.store.store

        def prefix() -> bytes:
            try:
                return part10_prefix(
                    sop_class_uid=command.affected_sop_class_uid,
                    sop_instance_uid=command.affected_sop_instance_uid,
                    transfer_syntax=context.transfer_syntax,
                )
            except UnicodeEncodeError:  # not a UID: the dataset cannot match it and will be refused (0xA900)
                return b""

        # Only a C-STORE's dataset is kept; anything else (a C-FIND identifier) is counted and dropped.
        storing = command.command_field == C_STORE_RQ
        return DatasetSink(
            spool_dir=self._state.spool_dir,
            threshold=self._config.spool_threshold if storing else 0,
            min_free_bytes=store.min_free_bytes,
            prefix=prefix if storing else _no_prefix,
        )

    def _on_dataset_fragment(self, context: NegotiatedContext, fragment: memoryview, *, last: bool) -> None:
        message = self._receiving
        if message is None or message.sink is None:
            raise ProtocolViolation("a dataset fragment arrived without a command that announced one")
        if context.context_id != message.context.context_id:
            raise ProtocolViolation("dataset fragments on a different presentation context than their command")
        if message.command.command_field == C_STORE_RQ:
            message.sink.write(fragment)
        else:
            message.sink.received += len(fragment)
        if last:
            self._receiving = None
            if message.command.command_field == C_STORE_RQ:
                message.dataset = message.sink.finish()
            self._dispatch(message)

    # -- messages, in order ----------------------------------------------------------------------------

    def _dispatch(self, message: _Message) -> None:
        self._queue.append(message)
        if self._busy and not self._paused and self._transport is not None:
            # The peer sends before our answer (async operations were not negotiated): stop reading
            # until the queue drains, so that a pipelining sender cannot fill our memory.
            self._transport.pause_reading()
            self._paused = True
        self._next()

    def _next(self) -> None:
        while self._queue and not self._busy and not self._closing:
            message = self._queue.popleft()
            command = message.command
            field_ = command.command_field
            if field_ == C_STORE_RQ:
                self._store(message)
            elif field_ == C_ECHO_RQ:
                self._respond(message, Status.SUCCESS)
            elif field_ == C_CANCEL_RQ or not command.is_request:
                logger.debug("ignored DIMSE command %#06x from %s", field_, self._calling)
            else:
                logger.info("unsupported DIMSE command %#06x from %s answered 0x0211", field_, self._calling)
                self._respond(message, Status.UNRECOGNISED_OPERATION, "only C-STORE and C-ECHO are served")
        if self._queue or self._busy or self._closing:
            return
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        if self._release_requested:
            self._finish_release()

    def _store(self, message: _Message) -> None:
        command, context = message.command, message.context
        self._moved = self._moved or bool(command.move_originator_ae)
        if message.dataset is None:
            failure = message.sink.failure if message.sink is not None else ""
            if failure:
                self._respond(message, Status.OUT_OF_RESOURCES, failure)
            else:
                self._respond(message, Status.PROCESSING_FAILURE, "C-STORE-RQ without a dataset")
            return
        if command.affected_sop_class_uid != context.abstract_syntax:
            _discard(message)
            self._respond(
                message, Status.SOP_CLASS_NOT_SUPPORTED, "Affected SOP Class differs from the presentation context"
            )
            return
        assert self._origin is not None
        if self._state.store.journal is not None and not _spooled(message):
            if self._state.established == 1:
                # The only association: nothing else needs the loop while this instance's journal record
                # is synced, and two thread hand-offs would cost a tenth of the instance's time.
                self._stored(message, _done(_receive, self._state.store, message, self._origin))
                return
            # Several: the record is written here, on the loop (a thread hand-off would cost more than
            # the write), and the Success goes once the journal's sync thread has made it durable.
            outcome = _done(partial(_receive, defer=True), self._state.store, message, self._origin)
            if not isinstance(outcome.exception(), JournalBusy):  # busy: it would wait; the thread pool may
                self._busy = True
                received = None if outcome.exception() else outcome.result()
                if received is not None and received.ok and received.durable_seq:
                    self._state.when_durable(received.durable_seq, partial(self._durable, message, received))
                else:
                    self._stored(message, outcome)
                return
        self._busy = True
        job = partial(_receive, self._state.store, message, self._origin)
        future = self._loop.run_in_executor(self._state.executor, job)
        future.add_done_callback(partial(self._stored, message))

    def _stored(
        self, message: _Message, future: asyncio.Future[Received] | concurrent.futures.Future[Received]
    ) -> None:
        self._busy = False
        self.instances += 1
        try:
            received = future.result()
        except Exception:  # the store's own failures are statuses; anything else is a bug, answered 0x0110
            logger.exception("storing an instance failed unexpectedly")
            received = Received(Status.PROCESSING_FAILURE, "internal error while storing")
        if not is_stored(received.status):
            self._refused = True
        if self._closing:
            self._notify_end()
            return
        self._respond(message, received.status, received.reason)
        self._next()

    def _durable(self, message: _Message, received: Received, error: JournalRefused | None) -> None:
        if error is not None:  # never acknowledged: the sender keeps the instance and may send it again
            received = Received(Status.OUT_OF_RESOURCES, f"the study store cannot take it: {error}")
        self._stored(message, _finished(received))

    def _respond(self, message: _Message, status: int, reason: str = "") -> None:
        response = encode_response(message.command, status, error_comment=reason)
        pdus = encode_pdata(message.context.context_id, response, command=True, max_pdu=self._peer_max_pdu)
        self._send(b"".join(pdus))
        self._last_pdu = self._loop.time()  # the peer's time to answer starts now, not at its last PDU

    # -- release, abort, timers ------------------------------------------------------------------------

    def _on_release(self) -> None:
        if self._receiving is not None or self._command:
            raise ProtocolViolation("A-RELEASE-RQ in the middle of a message", AbortReason.UNEXPECTED_PDU)
        self._release_requested = True
        self._phase = "releasing"
        self._next()

    def _finish_release(self) -> None:
        self._send(encode_release_rp())
        self._end_notice = "released"
        logger.info("association from %s (%s) released after %d instance(s)", self._calling, self._peer, self.instances)
        self._close(linger=True)

    def _notify_end(self) -> None:
        """Tell the completeness tracker, once no store job of this association can still report."""
        if self._busy or self._ended or self._end_notice is None or self._origin is None:
            return
        self._ended = True
        tracker = self._state.store.tracker
        # Behind this association's instances: the router must not see a study before its rows.
        if self._end_notice == "released":
            key, calling_ae = self._origin.key, self._origin.calling_ae
            released = partial(tracker.association_released, key, calling_ae, moved=self._moved, refused=self._refused)
            self._state.store.then(released)
        else:
            self._state.store.then(partial(tracker.association_aborted, self._origin.key))

    def abort(self, why: str, reason: int = AbortReason.NOT_SPECIFIED, *, source: int = 2) -> None:
        """Send an A-ABORT and close; what is being received is dropped, nothing of it acknowledged."""
        if self._closing:
            return
        if self._tls is not None:  # still in its TLS handshake: a plaintext PDU would only corrupt it
            self._closing = True
            if self._transport is not None:
                self._transport.abort()
            return
        logger.warning("association from %s (%s) aborted: %s", self._calling, self._peer, why)
        self._send(encode_abort(source, reason))
        self._close(linger=True)

    def _close(self, *, linger: bool = False) -> None:
        """Close the connection; with ``linger``, leave the closing to the peer for a moment.

        After A-ASSOCIATE-RJ, A-RELEASE-RP or A-ABORT the requestor closes the transport (PS3.8
        state Sta13, ARTIM running). Closing first can turn our last PDU into a TCP reset that
        the peer never reads, so the peer gets ``acse_timeout_s`` (the ARTIM timer) to close; its EOF
        closes ours. Until then a connection that was never associated still counts as pending.
        """
        self._closing = True
        if self._transport is None or self._transport.is_closing():
            return
        if linger:
            if self._artim is not None:
                self._artim.cancel()
            self._artim = self._loop.call_later(self._config.acse_timeout_s, self._linger_expired)
            return
        self._transport.close()  # flushes what was written, then connection_lost()

    def _linger_expired(self) -> None:
        self._artim = None
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def _send(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _artim_expired(self) -> None:
        self._artim = None
        if self._phase == "request":
            timeout = self._config.request_timeout_s
            allowed, held = self._state.dropped_log.allow()
            if allowed:
                more = f" ({held} more since the last such line)" if held else ""
                logger.warning("no whole A-ASSOCIATE-RQ from %s within %.0f s: closed%s", self._peer, timeout, more)
            self._closing = True
            if self._transport is not None:
                self._transport.abort()

    def _schedule_idle(self) -> None:
        interval = min(self._config.network_timeout_s / 4, 5.0)
        self._idle = self._loop.call_later(interval, self._idle_check)

    def _idle_check(self) -> None:
        self._idle = None
        if self._closing:
            return
        waiting_for_peer = not self._busy and not self._queue
        if waiting_for_peer and self._loop.time() - self._last_pdu > self._config.network_timeout_s:
            self.abort(f"no whole PDU received for {self._config.network_timeout_s:.0f} s")
            return
        self._schedule_idle()


def _no_prefix() -> bytes:
    return b""


def _certificate_names(peercert: object) -> frozenset[str]:
    """A verified client certificate's subject common names and DNS subject alternative names."""
    if not isinstance(peercert, dict):
        return frozenset()
    names = {value for rdn in peercert.get("subject", ()) for key, value in rdn if key == "commonName"}
    names |= {value for kind, value in peercert.get("subjectAltName", ()) if kind == "DNS"}
    return frozenset(names)


def _handshake_failure(exc: BaseException) -> str:
    """A bounded label for a failed handshake (the metric's ``reason``)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "certificate"
    if isinstance(exc, ssl.SSLError):
        reason = (getattr(exc, "reason", "") or "").upper()
        return "certificate" if "CERTIFICATE" in reason else "protocol"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "connection"


def _spooled(message: _Message) -> bool:
    return isinstance(message.dataset, SpooledDataset)


def _done(function: Callable[..., Received], *args: object) -> concurrent.futures.Future[Received]:
    """Run ``function`` here and now; its outcome as a finished future (as the thread pool gives it)."""
    future: concurrent.futures.Future[Received] = concurrent.futures.Future()
    try:
        future.set_result(function(*args))
    except Exception as exc:  # reported by _stored, as from the pool
        future.set_exception(exc)
    return future


def _finished(received: Received) -> concurrent.futures.Future[Received]:
    future: concurrent.futures.Future[Received] = concurrent.futures.Future()
    future.set_result(received)
    return future


def _discard(message: _Message) -> None:
    if message.sink is not None:
        message.sink.discard()
    if isinstance(message.dataset, SpooledDataset):
        message.dataset.path.unlink(missing_ok=True)


def _receive(context: StoreContext, message: _Message, origin: Origin, *, defer: bool = False) -> Received:
    """The blocking part of a C-STORE, run in the thread pool (``defer``: the part that never blocks,
    run on the loop; see :func:`receive_instance`'s ``defer_durability``)."""
    dataset = message.dataset
    assert dataset is not None
    try:
        return receive_instance(
            context,
            dataset,
            message.context.transfer_syntax,
            origin,
            expected_sop_instance_uid=message.command.affected_sop_instance_uid,
            expected_sop_class_uid=message.command.affected_sop_class_uid,
            defer_durability=defer,
        )
    finally:
        if isinstance(dataset, SpooledDataset):
            dataset.path.unlink(missing_ok=True)  # adopted (renamed away) unless refused
