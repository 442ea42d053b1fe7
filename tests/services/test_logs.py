"""Process logs: one record, one line, whatever a peer put in the values."""

from __future__ import annotations

import io
import logging

from hounsfield.logs import setup_logging


def test_a_peer_controlled_value_cannot_forge_a_log_line() -> None:
    stream = io.StringIO()
    setup_logging("INFO", "listener", stream=stream)
    logger = logging.getLogger("hounsfield.listener.engine.association")
    calling = "EVIL\n2026-12-02 08:00:00,000 listener INFO hounsfield.registry: admin token created\r"
    logger.warning("association from %s (%s) rejected: calling AE title not recognised", calling, "10.0.0.9")
    logger.info("a description with \x1b[31mterminal codes\x1b[0m and a line separator\u2028here")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert "EVIL\\n2026-12-02 08:00:00,000 listener INFO" in lines[0] and lines[0].endswith("not recognised")
    assert "\\x1b[31m" in lines[1] and "\\u2028" in lines[1]


def test_a_logged_traceback_keeps_its_lines() -> None:
    stream = io.StringIO()
    setup_logging("INFO", "worker", stream=stream)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("hounsfield.worker").exception("job failed")
    text = stream.getvalue()
    assert "job failed\nTraceback (most recent call last):" in text and "RuntimeError: boom" in text
