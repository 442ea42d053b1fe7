"""Radiologists' feedback on results, tied to the model version that made them.

- :mod:`.verdicts`: accept, reject (with a reason) or comment on a result, through the API or the CLI;
  audited, and an event on the study's path;
- :mod:`.corrections`: a corrected segmentation that arrives for a study (a SEG that refers to one of
  Hounsfield's SEGs, or to the same source series in the same frame of reference) is recognised as
  feedback on that SEG, with its Dice against the original per segment;
- :mod:`.summary`: per use case, model and version: agreement rate, rejections by reason, mean Dice of
  the corrections.
"""

from __future__ import annotations

from hounsfield.feedback.corrections import NoSharedImage, SegmentDice, recognise_corrections, segment_dice
from hounsfield.feedback.summary import FeedbackSummary, summarise
from hounsfield.feedback.verdicts import REJECTION_REASONS, give_feedback

__all__ = [
    "REJECTION_REASONS",
    "FeedbackSummary",
    "NoSharedImage",
    "SegmentDice",
    "give_feedback",
    "recognise_corrections",
    "segment_dice",
    "summarise",
]
