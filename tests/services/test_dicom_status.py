"""One DICOM status vocabulary: the codes by name, their meaning and category from pynetdicom's tables."""

from __future__ import annotations

import pytest

from hounsfield.dicom_status import Status, describe, is_pending, is_stored


def test_the_codes_hounsfield_answers_are_named_as_ps3_4_numbers_them() -> None:
    assert (Status.SUCCESS, Status.OUT_OF_RESOURCES, Status.DATASET_MISMATCH, Status.CANNOT_UNDERSTAND) == (
        0x0000, 0xA700, 0xA900, 0xC210,
    )  # fmt: skip
    assert (Status.PROCESSING_FAILURE, Status.SOP_CLASS_NOT_SUPPORTED, Status.UNRECOGNISED_OPERATION) == (
        0x0110, 0x0122, 0x0211,
    )  # fmt: skip
    assert Status.OUT_OF_RESOURCES.label == "out_of_resources", "metrics label refusals by these names"


@pytest.mark.parametrize(
    ("code", "service", "words"),
    [
        (0xA700, "storage", "Refused: Out of Resources"),
        (0xA900, "storage", "Data Set Does Not Match SOP Class"),
        (0xC210, "storage", "Cannot Understand"),
        (0x0110, "storage", "Processing Failure"),
        (0xC122, "storage", "Referenced Transfer Syntax not supported"),
        (0xA801, "move", "Move destination unknown"),
        (0xB000, "move", "Sub-operations completed, one or more failures"),
        (0x0000, "storage", "Success"),
        (0x1234, "storage", ""),
    ],
)
def test_meanings_come_from_the_standards_tables(code: int, service: str, words: str) -> None:
    assert describe(code, service) == words  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("code", "stored"),
    [(0x0000, True), (0xB000, True), (0xB007, True), (0xB006, True), (0xA700, False), (0xC210, False), (0x0110, False)],
)
def test_a_c_store_is_stored_on_success_and_on_warnings(code: int, stored: bool) -> None:
    assert is_stored(code) is stored


@pytest.mark.parametrize(("code", "pending"), [(0xFF00, True), (0xFF01, True), (0x0000, False), (0xB000, False)])
def test_pending_answers_of_a_query_or_retrieve(code: int, pending: bool) -> None:
    assert is_pending(code) is pending
