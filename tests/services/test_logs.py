"""Process logs: one record, one line, whatever a peer put in the values."""

from __future__ import annotations

import io
import json
import logging
import threading
from datetime import UTC, datetime, timedelta

from pydicom.dataset import Dataset

from hounsfield.listener.header import DatasetMalformed
from hounsfield.logs import DEFAULT_CORRELATION_KEY, Throttle, log_context, setup_logging, study_correlation_id


def test_a_peer_controlled_value_cannot_forge_a_log_line() -> None:
    stream = io.StringIO()
    setup_logging("INFO", "listener", stream=stream, log_format="text")
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
    setup_logging("INFO", "worker", stream=stream, log_format="text")
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
    setup_logging("INFO", "listener", stream=stream, log_format="text")
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
    setup_logging("INFO", "worker", stream=stream, log_format="text")
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
    setup_logging("INFO", "worker", stream=stream, log_format="text")
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


# JSON lines (log_format: json, the services' default) and correlation ids.


def _json_lines(stream: io.StringIO) -> list[dict]:
    text = stream.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]  # each line alone is one whole object


def test_json_lines_are_one_object_per_record_whatever_the_values() -> None:
    stream = io.StringIO()
    setup_logging("INFO", "listener", stream=stream)
    logger = logging.getLogger("hounsfield.listener.engine.association")
    forged = 'EVIL\n{"time": "2026-12-02T08:00:00Z", "level": "INFO", "message": "admin token created"}\r'
    logger.warning("association from %s rejected", forged)
    logger.info("codes \x1b[31m, a line separator\u2028, a next line\x85 and a NUL\x00")
    raw = stream.getvalue().split("\n")
    assert len(raw) == 3 and raw[-1] == "", raw  # two records, two lines: nothing a value holds breaks one
    assert all(line.isascii() for line in raw), "non-ASCII is escaped: no Unicode line break reaches the file"
    first, second = _json_lines(stream)
    assert set(first) == {"time", "level", "process", "pid", "thread", "logger", "message", "study", "job", "request"}
    assert first["level"] == "WARNING" and first["process"] == "listener" and first["logger"] == logger.name
    assert first["message"] == 'association from EVIL\\n{"time": "2026-12-02T08:00:00Z", "level": "INFO", ' + (
        '"message": "admin token created"}\\r rejected'
    ), "control characters escaped in the message itself, as in the text format"
    assert second["message"] == "codes \\x1b[31m, a line separator\\u2028, a next line\\u0085 and a NUL\\x00"
    stamp = datetime.fromisoformat(first["time"])
    assert first["time"].endswith("Z") and stamp.utcoffset() == timedelta(0)
    assert abs((datetime.now(UTC) - stamp).total_seconds()) < 60


def test_json_lines_redact_exceptions_as_the_text_format_does() -> None:
    stream = io.StringIO()
    setup_logging("INFO", "worker", stream=stream)
    name = "Doe^" + "Jane"  # not in a source line the traceback quotes
    try:
        try:
            raise ValueError(f"Invalid value for VR PN: '{name}'")
        except ValueError as exc:
            raise DatasetMalformed("element (0010,0010) at offset 12 has no valid VR") from exc
    except DatasetMalformed:
        logging.getLogger("hounsfield.worker").exception("job failed")
    try:
        open(f"/nonexistent/{name}.dcm")  # noqa: SIM115 - the error is the point
    except OSError:
        logging.getLogger("hounsfield.worker").exception("reading failed")
    try:
        raise ExceptionGroup("several", [ValueError(f"{name} is bad"), DatasetMalformed("our own words")])
    except ExceptionGroup:
        logging.getLogger("hounsfield.worker").exception("jobs failed")
    logging.getLogger("pydicom").warning("Invalid value for VR PN: '%s'. Please see the standard", name)
    assert name not in stream.getvalue()
    failed, reading, group, library = _json_lines(stream)
    assert failed["message"] == "job failed" and failed["exception"].startswith("Traceback (most recent call last):")
    assert "ValueError: (message withheld: it may hold patient data)" in failed["exception"]
    assert "DatasetMalformed: element (0010,0010) at offset 12 has no valid VR" in failed["exception"]
    assert "FileNotFoundError: [Errno 2] No such file or directory" in reading["exception"]
    assert "our own words" in group["exception"]
    assert library["message"] == "Invalid value for VR PN: (value withheld)"


def test_a_cached_unredacted_traceback_is_not_reused() -> None:
    """Another handler (a test runner's, say) formats first and caches its text on the record."""
    stream = io.StringIO()
    setup_logging("INFO", "worker", stream=stream)
    plain = logging.StreamHandler(io.StringIO())
    logging.getLogger().addHandler(plain)
    try:
        try:
            raise ValueError("Doe^" + "Jane")
        except ValueError:
            logging.getLogger("hounsfield.worker").exception("failed")
    finally:
        logging.getLogger().removeHandler(plain)
    assert "Doe^Jane" in plain.stream.getvalue(), "the plain handler did cache it"
    assert "Doe^Jane" not in stream.getvalue()


def test_a_lines_correlation_ids_are_its_context_and_reset_after() -> None:
    stream = io.StringIO()
    key = b"an installation's own key"
    setup_logging("INFO", "listener", stream=stream, correlation_key=key)
    logger = logging.getLogger("hounsfield.router.routing")
    uid = "1.2.826.0.1.3680043.10.1392.77.1"
    try:
        logger.info("before")
        with log_context(study_uid=uid):
            logger.info("study")
            with log_context(job="job-1"):
                logger.info("job")
            logger.info("study again")
        logger.info("after")
        with log_context(study="made-elsewhere", request="r-1"), log_context(study=None):
            logger.info("cleared")
    finally:
        setup_logging("INFO", "listener", stream=io.StringIO(), correlation_key=DEFAULT_CORRELATION_KEY)
    lines = _json_lines(stream)
    ids = [(line["message"], line["study"], line["job"], line["request"]) for line in lines]
    study = study_correlation_id(uid, key)
    assert ids == [
        ("before", None, None, None),
        ("study", study, None, None),
        ("job", study, "job-1", None),
        ("study again", study, None, None),
        ("after", None, None, None),
        ("cleared", None, None, "r-1"),
    ]
    assert uid not in stream.getvalue(), "the UID itself is never written"
    assert len(study) == 20 and int(study, 16) >= 0
    assert study == study_correlation_id(uid, key), "stable: whoever holds the UID and the key finds the lines"
    assert study != study_correlation_id(uid, DEFAULT_CORRELATION_KEY), "keyed: another installation, another id"
    assert study != study_correlation_id(uid + "1", key)


def test_the_text_format_carries_the_correlation_ids_too() -> None:
    stream = io.StringIO()
    setup_logging("INFO", "worker", stream=stream, log_format="text")
    with log_context(study="abc123", job="job-9"):
        logging.getLogger("hounsfield.worker.pipeline").info("job done")
    logging.getLogger("hounsfield.worker.pipeline").info("idle")
    first, second = stream.getvalue().splitlines()
    assert first.endswith("hounsfield.worker.pipeline: job done [study=abc123 job=job-9]"), first
    assert second.endswith("hounsfield.worker.pipeline: idle"), second


def test_threads_carry_their_own_study_and_never_an_earlier_one() -> None:
    """Threads start without the starting thread's ids; two working at once each log their own study."""
    stream = io.StringIO()
    setup_logging("INFO", "listener", stream=stream)
    logger = logging.getLogger("hounsfield.listener.ingest")
    both_inside = threading.Barrier(2, timeout=10)

    def work(uid: str) -> None:
        logger.info("thread starts")
        with log_context(study_uid=uid):
            both_inside.wait()  # the other thread has set its own study meanwhile
            logger.info("working for %s", uid[-1])
            both_inside.wait()
        logger.info("thread idle")

    with log_context(study_uid="1.2.3.9", job="main-job"):
        threads = [threading.Thread(target=work, args=(uid,), name=f"t{uid[-1]}") for uid in ("1.2.3.1", "1.2.3.2")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    lines = [line for line in _json_lines(stream)]
    assert len(lines) == 6
    for line in lines:
        if line["message"].startswith("working for "):
            assert line["study"] == study_correlation_id(f"1.2.3.{line['message'][-1]}"), line
        else:
            assert line["study"] is None and line["job"] is None, line


def test_a_json_line_logged_with_its_stack_carries_it_and_nothing_a_caller_attached() -> None:
    stream = io.StringIO()
    setup_logging("INFO", "worker", stream=stream)
    name = "Doe^" + "Jane"  # not in the source line the stack quotes
    logging.getLogger("hounsfield.worker").info("here", stack_info=True, extra={"patient_name": name})
    (line,) = _json_lines(stream)
    assert line["stack"].startswith("Stack (most recent call last):") and "test_logs.py" in line["stack"]
    assert "patient_name" not in line and "Doe^Jane" not in stream.getvalue(), "no extra field is written"
