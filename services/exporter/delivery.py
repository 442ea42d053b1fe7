"""Deliver result objects to a destination over its protocol, retrying while it is unreachable.

One attempt sends every file: in one C-STORE association (:mod:`hounsfield.exporter.cstore`) or in one
STOW-RS request (:mod:`hounsfield.exporter.stowrs`). A destination that cannot be reached is tried
``retries`` more times, ``retry_backoff_s`` doubling in between, then reported
:class:`DestinationUnreachable` (the worker keeps the results and lets the job wait); a refusal is
:class:`ExportFailed` at once, with the destination's words.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from hounsfield.config import DestinationSettings
from hounsfield.exporter.cstore import send_once
from hounsfield.exporter.errors import DestinationUnreachable, ExportFailed
from hounsfield.exporter.stowrs import store_once

__all__ = ["DestinationUnreachable", "ExportFailed", "deliver"]

logger = logging.getLogger(__name__)


def deliver(paths: Sequence[Path], destination: DestinationSettings, *, calling_ae: str) -> int:
    """Send every file to ``destination``; returns the number of attempts it took."""
    attempts = destination.retries + 1
    for attempt in range(1, attempts + 1):
        try:
            if destination.protocol == "stow-rs":
                store_once(paths, destination)
            else:
                send_once(paths, destination, calling_ae)
            logger.info("%d object(s) delivered to %s (attempt %d)", len(paths), destination.label, attempt)
            return attempt
        except ExportFailed as exc:
            raise ExportFailed(f"export to {destination.label}: {exc}", protocol=destination.protocol) from exc
        except (ConnectionError, OSError, RuntimeError) as exc:
            if attempt == attempts:
                raise DestinationUnreachable(
                    f"{destination.label} unreachable after {attempt} attempt(s): {exc}", protocol=destination.protocol
                ) from exc
            delay = destination.retry_backoff_s * 2 ** (attempt - 1)
            logger.warning("export to %s failed (%s); retry %d in %.1f s", destination.label, exc, attempt, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")
