"""Who may send: the association policy, decided once per association before anything is stored.

A caller is recognised by its calling AE title (and, where configured, the network it calls from);
it may use only the called AE titles its source lists. In open mode unknown callers are accepted
and logged, so that a first installation can learn who sends before closing the door.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from ipaddress import ip_address

from hounsfield.config import ListenerSettings, SourceSettings

__all__ = ["AssociationPolicy", "Decision", "Rejection"]

logger = logging.getLogger(__name__)


class Rejection(enum.IntEnum):
    """A-ASSOCIATE-RJ reasons (service user, PS3.8 9.3.4), permanent rejections."""

    NO_REASON = 1
    CALLING_AE_NOT_RECOGNIZED = 3
    CALLED_AE_NOT_RECOGNIZED = 7


@dataclass(frozen=True)
class Decision:
    """Accept (``rejection is None``) or reject, with the source that matched and a reason for the log."""

    source: str | None
    reason: str
    rejection: Rejection | None = None

    @property
    def accepted(self) -> bool:
        return self.rejection is None


class AssociationPolicy:
    """Decides each association request from the listener's settings."""

    def __init__(self, settings: ListenerSettings) -> None:
        self._settings = settings
        self._open_called = {settings.ae_title} | {
            title for source in settings.sources.values() for title in source.called_ae_titles
        }

    def _called_titles(self, source: SourceSettings) -> set[str]:
        return set(source.called_ae_titles) or {self._settings.ae_title}

    @staticmethod
    def _from_network(source: SourceSettings, address: str) -> bool:
        if not source.networks:
            return True
        try:
            ip = ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in source.networks)

    def decide(
        self, calling_ae: str, called_ae: str, address: str, *, certificate_names: frozenset[str] | None = None
    ) -> Decision:
        """The decision for one A-ASSOCIATE-RQ; AE titles are compared without their padding.

        ``certificate_names``: the names of the caller's verified TLS client certificate (None over
        plain TCP). A source with ``tls_client_names`` is accepted only when one of them is among these.
        """
        calling, called = calling_ae.strip(), called_ae.strip()
        candidates = [(name, s) for name, s in self._settings.sources.items() if s.ae_title == calling]
        if not candidates:
            if self._settings.open_mode:
                if called not in self._open_called:
                    reason = f"called AE title {called!r} is not served"
                    return Decision(None, reason, Rejection.CALLED_AE_NOT_RECOGNIZED)
                logger.warning("unknown caller %r from %s accepted (open mode)", calling, address)
                return Decision(None, "unknown caller accepted in open mode")
            return Decision(
                None,
                f"calling AE title {calling!r} is not a configured source (listener.sources)",
                Rejection.CALLING_AE_NOT_RECOGNIZED,
            )
        located = [(name, s) for name, s in candidates if self._from_network(s, address)]
        if not located:
            names = ", ".join(name for name, _ in candidates)
            return Decision(None, f"{calling!r} may not call from {address} (source {names})", Rejection.NO_REASON)
        presented = certificate_names or frozenset()
        bound = [(name, s) for name, s in located if not s.tls_client_names or presented & set(s.tls_client_names)]
        if not bound:
            names = ", ".join(name for name, _ in located)
            how = "over plain TCP" if certificate_names is None else "without a client certificate it is bound to"
            return Decision(
                None,
                f"{calling!r} called {how} (source {names} sets tls_client_names)",
                Rejection.CALLING_AE_NOT_RECOGNIZED,
            )
        located = bound
        for name, source in located:
            if called in self._called_titles(source):
                return Decision(name, f"source {name}")
        names = ", ".join(name for name, _ in located)
        return Decision(
            located[0][0],
            f"source {names} may not use called AE title {called!r}",
            Rejection.CALLED_AE_NOT_RECOGNIZED,
        )
