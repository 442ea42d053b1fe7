from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from hounsfield.contracts.rules import Rule, SeriesFacts

RULE = TypeAdapter(Rule)


def facts(**tags: str) -> SeriesFacts:
    return SeriesFacts("1.2.3", instance_count=int(tags.pop("n", "40")), calling_ae=tags.pop("ae", "CT01"), tags=tags)


@pytest.mark.parametrize(
    ("rule", "series", "expected"),
    [
        ({"kind": "modality", "in": ["CT"]}, facts(Modality="CT"), True),
        ({"kind": "modality", "in": ["ct"]}, facts(Modality="CT"), True),
        ({"kind": "modality", "in": ["CT"]}, facts(Modality="MR"), False),
        ({"kind": "body_part", "in": ["ABDOMEN"]}, facts(BodyPartExamined="CHEST"), False),
        ({"kind": "series_description", "regex": "(?i)portal"}, facts(SeriesDescription="Abd PORTAL venous"), True),
        ({"kind": "calling_ae", "in": ["CT01"]}, facts(), True),
        ({"kind": "tag_range", "keyword": "SliceThickness", "max": 3}, facts(SliceThickness="2.5"), True),
        ({"kind": "tag_range", "keyword": "SliceThickness", "max": 3}, facts(SliceThickness="5"), False),
        ({"kind": "tag_range", "keyword": "SliceThickness", "min": 1}, facts(), False),
        ({"kind": "instance_count", "min": 50}, facts(n="40"), False),
        ({"kind": "not", "rule": {"kind": "modality", "in": ["MR"]}}, facts(Modality="CT"), True),
        (
            {"kind": "any", "rules": [{"kind": "modality", "in": ["MR"]}, {"kind": "modality", "in": ["CT"]}]},
            facts(Modality="CT"),
            True,
        ),
        (
            {
                "kind": "all",
                "rules": [
                    {"kind": "modality", "in": ["CT"]},
                    {"kind": "tag_equals", "keyword": "Manufacturer", "value": "ACME"},
                ],
            },
            facts(Modality="CT", Manufacturer="Other"),
            False,
        ),
    ],
)
def test_rule_decisions(rule: dict, series: SeriesFacts, expected: bool) -> None:
    assert RULE.validate_python(rule).evaluate(series).matched is expected


def test_explanation_says_why() -> None:
    rule = RULE.validate_python(
        {"kind": "all", "rules": [{"kind": "modality", "in": ["CT"]}, {"kind": "body_part", "in": ["HEAD"]}]}
    )
    text = rule.evaluate(facts(Modality="CT", BodyPartExamined="ABDOMEN")).explain()
    assert "[no ] all of 2" in text
    assert "[yes] modality 'CT' in ['CT']" in text
    assert "[no ] body part 'ABDOMEN' not in ['HEAD']" in text


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"kind": "series_description", "regex": "("}, "invalid regular expression"),
        ({"kind": "series_description", "regex": r"(scout)\1"}, "no backreferences, lookahead or lookbehind"),
        ({"kind": "tag_matches", "keyword": "ProtocolName", "regex": "(?=HEAD)"}, "invalid regular expression"),
        ({"kind": "series_description", "regex": "a" * 257}, "longer than 256 characters"),
        ({"kind": "modality", "in": ["CT"] * 257}, "at most 256 items"),
        ({"kind": "all", "rules": [{"kind": "modality", "in": ["CT"]}] * 257}, "at most 256 items"),
        (
            {"kind": "any", "rules": [{"kind": "all", "rules": [{"kind": "modality", "in": ["CT"]}] * 64}] * 4},
            "at most 256 matchers; this one has 261",
        ),
        ({"kind": "tag_equals", "keyword": "ProtocolName", "value": "x" * 1025}, "at most 1024 characters"),
        ({"kind": "tag_equals", "keyword": "PatientName", "value": "x"}, "not indexed"),
        ({"kind": "tag_range", "keyword": "SliceThickness"}, "needs min, max or both"),
        ({"kind": "tag_range", "keyword": "SliceThickness", "min": 5, "max": 1}, "above max"),
        ({"kind": "modality", "in": []}, "at least 1 item"),
        ({"kind": "modality", "values": ["CT"]}, "Extra inputs are not permitted"),
        ({"kind": "colour", "in": ["red"]}, "does not match any of the expected tags"),
    ],
)
def test_bad_rules_fail_at_load_time(rule: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RULE.validate_python(rule)


@pytest.mark.timeout(20)
def test_patterns_match_in_linear_time() -> None:
    """A pattern that makes a backtracking engine run for seconds at 28 characters, doubling with each one
    more, is matched over 5,000: with Python's ``re`` this test would never end (the timeout fails it)."""
    rule = TypeAdapter(Rule).validate_python({"kind": "series_description", "regex": "^(a+)+$"})
    assert not rule.evaluate(SeriesFacts("1.2.3", 1, tags={"SeriesDescription": "a" * 5000 + "!"})).matched
    assert rule.evaluate(SeriesFacts("1.2.3", 1, tags={"SeriesDescription": "aaa"})).matched
