"""Routing rules as typed data.

A rule is a tree of matchers (a pydantic discriminated union on ``kind``) evaluated against the
facts of one series. Patterns are compiled once when the configuration is loaded, and every
evaluation says why it matched or not, so that a rule can be tested before it is deployed.

.. code-block:: yaml

    rule:
      kind: all
      rules:
        - {kind: modality, in: [CT]}
        - {kind: body_part, in: [ABDOMEN, CHEST]}
        - {kind: not, rule: {kind: series_description, regex: "(?i)scout|localizer"}}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import re2
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

__all__ = [
    "INDEXED_TAGS",
    "AllOf",
    "AnyOf",
    "BodyPartIn",
    "CalledAeIn",
    "CallingAeIn",
    "InstanceCount",
    "Match",
    "ModalityIn",
    "Not",
    "Rule",
    "SeriesDescriptionMatches",
    "SeriesFacts",
    "TagEquals",
    "TagIn",
    "TagMatches",
    "TagRange",
]

INDEXED_TAGS: tuple[str, ...] = (
    "Modality",
    "BodyPartExamined",
    "SeriesDescription",
    "StudyDescription",
    "ProtocolName",
    "Manufacturer",
    "ManufacturerModelName",
    "ImageType",
    "SliceThickness",
    "SOPClassUID",
    "ContrastBolusAgent",
    "Laterality",
)
"""Tags the listener indexes per series; tag matchers may only name these."""


@dataclass(frozen=True)
class SeriesFacts:
    """What the router knows about one series when its study is complete."""

    series_instance_uid: str
    instance_count: int
    calling_ae: str = ""
    called_ae: str = ""
    tags: dict[str, str] = field(default_factory=dict)

    def tag(self, keyword: str) -> str:
        return self.tags.get(keyword, "")


@dataclass(frozen=True)
class Match:
    """The outcome of one matcher and, for combinators, of its children."""

    matched: bool
    reason: str
    children: tuple[Match, ...] = ()

    def explain(self, indent: int = 0) -> str:
        """A readable, indented account of the decision."""
        mark = "yes" if self.matched else "no "
        lines = [f"{'  ' * indent}[{mark}] {self.reason}"]
        lines += [child.explain(indent + 1) for child in self.children]
        return "\n".join(lines)


class _Matcher(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def evaluate(self, facts: SeriesFacts) -> Match:  # pragma: no cover - abstract
        raise NotImplementedError(f"Subclass {type(self).__name__} must implement evaluate")

    @property
    def matchers(self) -> int:
        """How many matchers this one is, with its children (a leaf is one)."""
        return 1


def _bounded(rule: _Matcher) -> _Matcher:
    if rule.matchers > MAX_RULE_MATCHERS:
        raise ValueError(f"a rule may have at most {MAX_RULE_MATCHERS} matchers; this one has {rule.matchers}")
    return rule


def _check_keyword(keyword: str) -> str:
    if keyword not in INDEXED_TAGS:
        raise ValueError(f"tag {keyword!r} is not indexed; routing can use {', '.join(INDEXED_TAGS)}")
    return keyword


MAX_REGEX_LENGTH = 256
"""The longest pattern a rule may carry (series descriptions and tag values are short)."""
MAX_RULE_MATCHERS = 256
"""The most matchers one rule may have, combinators included: a rule is evaluated on every series of
every study, so its size is bounded (and so is a dry run's work)."""
MAX_LIST = 256
"""The most values one matcher's list may hold (``in``, ``values``) and the most children of ``all``/``any``."""

Text = Annotated[str, Field(max_length=1024)]


def _re2_options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # the refusal below says why; nothing on stderr
    options.max_mem = 1 << 20  # a pattern whose automaton would need more is refused
    return options


_RE2_OPTIONS = _re2_options()


def _re2(pattern: str) -> Any:
    """``pattern`` compiled by RE2, whose matching takes time linear in the text (no backtracking)."""
    if len(pattern) > MAX_REGEX_LENGTH:
        raise ValueError(f"the regular expression is longer than {MAX_REGEX_LENGTH} characters")
    try:
        return re2.compile(pattern, options=_RE2_OPTIONS)
    except re2.error as exc:
        why = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise ValueError(
            f"invalid regular expression {pattern!r}: {why} (rules match in linear time with RE2: "
            "no backreferences, lookahead or lookbehind)"
        ) from None


def _compile(pattern: str) -> str:
    _re2(pattern)
    return pattern


def _value_in(name: str, value: str, allowed: list[str]) -> Match:
    folded = {a.upper() for a in allowed}
    hit = value.upper() in folded
    return Match(hit, f"{name} {value or '(empty)'!r} {'in' if hit else 'not in'} {allowed}")


class ModalityIn(_Matcher):
    kind: Literal["modality"]
    in_: list[Text] = Field(alias="in", min_length=1, max_length=MAX_LIST)

    def evaluate(self, facts: SeriesFacts) -> Match:
        return _value_in("modality", facts.tag("Modality"), self.in_)


class BodyPartIn(_Matcher):
    kind: Literal["body_part"]
    in_: list[Text] = Field(alias="in", min_length=1, max_length=MAX_LIST)

    def evaluate(self, facts: SeriesFacts) -> Match:
        return _value_in("body part", facts.tag("BodyPartExamined"), self.in_)


class CallingAeIn(_Matcher):
    kind: Literal["calling_ae"]
    in_: list[Text] = Field(alias="in", min_length=1, max_length=MAX_LIST)

    def evaluate(self, facts: SeriesFacts) -> Match:
        return _value_in("calling AE", facts.calling_ae, self.in_)


class CalledAeIn(_Matcher):
    kind: Literal["called_ae"]
    in_: list[Text] = Field(alias="in", min_length=1, max_length=MAX_LIST)

    def evaluate(self, facts: SeriesFacts) -> Match:
        return _value_in("called AE", facts.called_ae, self.in_)


class _RegexMatcher(_Matcher):
    regex: str
    _pattern: Any = PrivateAttr()

    _valid = field_validator("regex")(_compile)

    def model_post_init(self, context: object) -> None:
        self._pattern = _re2(self.regex)

    def _search(self, name: str, value: str) -> Match:
        hit = self._pattern.search(value) is not None
        return Match(hit, f"{name} {value or '(empty)'!r} {'matches' if hit else 'does not match'} /{self.regex}/")


class SeriesDescriptionMatches(_RegexMatcher):
    kind: Literal["series_description"]

    def evaluate(self, facts: SeriesFacts) -> Match:
        return self._search("series description", facts.tag("SeriesDescription"))


class TagMatches(_RegexMatcher):
    kind: Literal["tag_matches"]
    keyword: str

    _keyword = field_validator("keyword")(_check_keyword)

    def evaluate(self, facts: SeriesFacts) -> Match:
        return self._search(self.keyword, facts.tag(self.keyword))


class TagEquals(_Matcher):
    kind: Literal["tag_equals"]
    keyword: str
    value: Text

    _keyword = field_validator("keyword")(_check_keyword)

    def evaluate(self, facts: SeriesFacts) -> Match:
        actual = facts.tag(self.keyword)
        hit = actual == self.value
        return Match(hit, f"{self.keyword} {actual!r} {'==' if hit else '!='} {self.value!r}")


class TagIn(_Matcher):
    kind: Literal["tag_in"]
    keyword: str
    values: list[Text] = Field(min_length=1, max_length=MAX_LIST)

    _keyword = field_validator("keyword")(_check_keyword)

    def evaluate(self, facts: SeriesFacts) -> Match:
        actual = facts.tag(self.keyword)
        hit = actual in self.values
        return Match(hit, f"{self.keyword} {actual!r} {'in' if hit else 'not in'} {self.values}")


class TagRange(_Matcher):
    kind: Literal["tag_range"]
    keyword: str
    min: float | None = None
    max: float | None = None

    _keyword = field_validator("keyword")(_check_keyword)

    @model_validator(mode="after")
    def _bounds(self) -> TagRange:
        if self.min is None and self.max is None:
            raise ValueError("tag_range needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"tag_range min {self.min} is above max {self.max}")
        return self

    def evaluate(self, facts: SeriesFacts) -> Match:
        raw = facts.tag(self.keyword)
        try:
            value = float(raw)
        except ValueError:
            return Match(False, f"{self.keyword} {raw or '(empty)'!r} is not a number")
        hit = (self.min is None or value >= self.min) and (self.max is None or value <= self.max)
        return Match(hit, f"{self.keyword} {value:g} {'within' if hit else 'outside'} [{self.min}, {self.max}]")


class InstanceCount(_Matcher):
    kind: Literal["instance_count"]
    min: int | None = Field(None, ge=0)
    max: int | None = Field(None, ge=0)

    def evaluate(self, facts: SeriesFacts) -> Match:
        n = facts.instance_count
        hit = (self.min is None or n >= self.min) and (self.max is None or n <= self.max)
        return Match(hit, f"{n} instances {'within' if hit else 'outside'} [{self.min}, {self.max}]")


class AllOf(_Matcher):
    kind: Literal["all"]
    rules: list[Rule] = Field(min_length=1, max_length=MAX_LIST)

    @property
    def matchers(self) -> int:
        return 1 + sum(rule.matchers for rule in self.rules)

    def evaluate(self, facts: SeriesFacts) -> Match:
        children = tuple(rule.evaluate(facts) for rule in self.rules)
        hit = all(c.matched for c in children)
        return Match(hit, f"all of {len(children)}", children)


class AnyOf(_Matcher):
    kind: Literal["any"]
    rules: list[Rule] = Field(min_length=1, max_length=MAX_LIST)

    @property
    def matchers(self) -> int:
        return 1 + sum(rule.matchers for rule in self.rules)

    def evaluate(self, facts: SeriesFacts) -> Match:
        children = tuple(rule.evaluate(facts) for rule in self.rules)
        hit = any(c.matched for c in children)
        return Match(hit, f"any of {len(children)}", children)


class Not(_Matcher):
    kind: Literal["not"]
    rule: Rule

    @property
    def matchers(self) -> int:
        return 1 + self.rule.matchers

    def evaluate(self, facts: SeriesFacts) -> Match:
        child = self.rule.evaluate(facts)
        return Match(not child.matched, "not", (child,))


Rule = Annotated[
    ModalityIn
    | BodyPartIn
    | CallingAeIn
    | CalledAeIn
    | SeriesDescriptionMatches
    | TagMatches
    | TagEquals
    | TagIn
    | TagRange
    | InstanceCount
    | AllOf
    | AnyOf
    | Not,
    Field(discriminator="kind"),
    AfterValidator(_bounded),
]

for _model in (AllOf, AnyOf, Not):
    _model.model_rebuild()
