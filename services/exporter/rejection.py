"""IHE IOCM rejection notes: a Key Object Selection that takes results back from a PACS.

A rejection note is a KOS document (highdicom) whose title says why (CID 7011): *Rejected for Quality
Reasons* (113001, DCM), or *Rejected for Patient Safety Reasons* (113037, DCM) for destinations that
support it. It references every withdrawn instance, in its content tree and in the Current Requested
Procedure Evidence, and joins the study of the withdrawn results in a series of its own. Its UIDs
derive from the configured UID root, the job's key and the title, so a note made twice is the same
note.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from hounsfield import __version__

__all__ = ["REJECTION_TITLES", "Reason", "build_rejection_note", "note_uids"]

Reason = Literal["quality", "patient-safety"]

REJECTION_TITLES: dict[Reason, Code] = {
    "quality": Code("113001", "DCM", "Rejected for Quality Reasons"),
    "patient-safety": Code("113037", "DCM", "Rejected for Patient Safety Reasons"),
}

PLATFORM_DEVICE = "Hounsfield"

_REFERENCE_VALUE_TYPES = {"IMAGE", "COMPOSITE", "WAVEFORM"}


def note_uids(uid_root: str, job_key: str, title: Code) -> tuple[str, str]:
    """The note's (Series Instance UID, SOP Instance UID), the same every time for one job and title."""
    series = generate_uid(prefix=uid_root, entropy_srcs=[job_key, "rejection-note-series", title.value])
    instance = generate_uid(prefix=uid_root, entropy_srcs=[job_key, "rejection-note", title.value])
    return series, instance


def build_rejection_note(
    withdrawn: Sequence[Dataset],
    *,
    reason: Reason,
    uid_root: str,
    job_key: str,
    description: str,
    manufacturer: str = "Hounsfield",
) -> hd.ko.KeyObjectSelectionDocument:
    """A rejection note for ``withdrawn`` (the results, from one study), titled for ``reason``.

    ``description`` (at most 64 characters are kept by the standard) says who withdrew them and why;
    it carries no patient data.
    """
    if not withdrawn:
        raise ValueError("a rejection note needs at least one withdrawn instance")
    studies = {str(ds.StudyInstanceUID) for ds in withdrawn}
    if len(studies) != 1:
        raise ValueError("a rejection note covers the instances of one study")
    title = REJECTION_TITLES[reason]
    series_uid, sop_uid = note_uids(uid_root, job_key, title)
    device = hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept.from_code(Code("121007", "DCM", "Device")),
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(prefix=uid_root, entropy_srcs=["platform-device", PLATFORM_DEVICE]),
            name=PLATFORM_DEVICE,
            manufacturer_name=manufacturer,
            model_name=f"Hounsfield {__version__}",
        ),
    )
    content = hd.ko.KeyObjectSelection(
        document_title=title,
        referenced_objects=list(withdrawn),
        observer_device_context=device,
        description=description[:1024],
    )
    note = hd.ko.KeyObjectSelectionDocument(
        evidence=list(withdrawn),
        content=content,
        series_instance_uid=series_uid,
        series_number=9901,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=manufacturer,
        series_description="AI results withdrawn"[:64],
    )
    # TID 2010 forbids a concept name (purpose of reference) on the referenced objects; highdicom writes
    # "Source" there, which a strict archive (and PixelMed's validator) refuses.
    for item in note.ContentSequence:
        if item.ValueType in _REFERENCE_VALUE_TYPES:
            del item.ConceptNameCodeSequence
    return note
