"""Process logs: one record, one line, whatever a peer put in the values."""

from __future__ import annotations

import io
import logging

from pydicom.dataset import Dataset

from hounsfield.listener.header import DatasetMalformed
from hounsfield.logs import Throttle, setup_logging


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


def test_a_logged_traceback_keeps_its_lines_and_only_our_own_words() -> None:
    """A decoder's message may quote the patient value it choked on: frames stay, foreign messages do not."""
    stream = io.StringIO()
    setup_logging("INFO", "worker", stream=stream)
    try:
        try:
            raise ValueError("Invalid value for VR PN: 'Doe^Jane'")
        except ValueError as exc:
            raise DatasetMalformed("element (0010,0010) at offset 12 has no valid VR") from exc
    except DatasetMalformed:
        logging.getLogger("hounsfield.worker").exception("job failed")
    try:
        open("/nonexistent/1.2.840.99/Doe^Jane.dcm")  # noqa: SIM115 - the error is the point
    except OSError:
        logging.getLogger("hounsfield.worker").exception("reading failed")
    text = stream.getvalue()
    assert "job failed\nTraceback (most recent call last):" in text, text
    assert 'raise ValueError("Invalid value for VR PN' in text, "the frames (our source lines) stay"
    assert "ValueError: (message withheld: it may hold patient data)" in text
    assert "DatasetMalformed: element (0010,0010) at offset 12 has no valid VR" in text, "our own words stay"
    assert "FileNotFoundError: [Errno 2] No such file or directory" in text
    assert "Doe^Jane'" not in text.replace("raise ValueError(\"Invalid value for VR PN: 'Doe^Jane'\")", "")
    assert "Doe^Jane.dcm" not in text.replace('open("/nonexistent/1.2.840.99/Doe^Jane.dcm")', "")


def test_a_library_warning_keeps_its_words_not_the_value() -> None:
    stream = io.StringIO()
    setup_logging("INFO", "listener", stream=stream)
    logging.getLogger("pydicom").warning("Invalid value for VR PN: '%s'. Please see the standard", "Doe^Jane")
    assert "Doe^Jane" not in stream.getvalue()
    assert "pydicom: Invalid value for VR PN: (value withheld)" in stream.getvalue()


def test_a_throttle_lets_a_burst_through_then_counts_what_it_held() -> None:
    now = [0.0]
    throttle = Throttle(burst=3, interval_s=60.0, clock=lambda: now[0])
    assert [throttle.allow() for _ in range(5)] == [(True, 0)] * 3 + [(False, 0)] * 2
    now[0] = 59.0
    assert throttle.allow() == (False, 0)
    now[0] = 60.0
    assert throttle.allow() == (True, 3), "the first line of the next minute says how many were held back"
    assert throttle.allow() == (True, 0)


def test_an_exception_groups_members_are_withheld_too() -> None:
    stream = io.StringIO()
    setup_logging("INFO", "worker", stream=stream)
    name = "Doe^" + "Jane"  # not in the source line the traceback quotes
    try:
        raise ExceptionGroup("several", [ValueError(f"{name} is bad"), DatasetMalformed("our own words")])
    except ExceptionGroup:
        logging.getLogger("hounsfield.worker").exception("jobs failed")
    text = stream.getvalue()
    assert "Doe^Jane is bad" not in text and "our own words" in text, text


def test_a_library_warning_through_warnings_keeps_its_words_not_the_value() -> None:
    """pydicom's warn_and_log also calls warnings.warn, which wrote the value straight to stderr."""
    import warnings

    stream = io.StringIO()
    setup_logging("INFO", "worker", stream=stream)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            Dataset().StudyDate = "Jane1234"
    finally:
        logging.captureWarnings(False)
    text = stream.getvalue()
    assert "Jane1234" not in text
    assert "pydicom: Invalid value for VR DA: (value withheld)" in text, "pydicom's own log line"
    assert "py.warnings: " in text and text.count("Invalid value for VR DA: (value withheld)") == 2, text
