"""One exception root: every exception class Hounsfield defines derives from ``HounsfieldError``."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import hounsfield
from hounsfield.errors import Conflict, HounsfieldError, Invalid, NotFound, Refused


def _exception_classes() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(hounsfield.__path__, "hounsfield."):
        if ".migrations" in info.name or info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == info.name:
                found[f"{info.name}.{value.__qualname__}"] = value
    return found


def test_every_exception_hounsfield_defines_has_the_one_root() -> None:
    found = _exception_classes()
    assert len(found) > 25, sorted(found)  # the walk reached every room
    assert [name for name, cls in found.items() if not issubclass(cls, HounsfieldError)] == []


def test_no_two_exceptions_share_a_name() -> None:
    names = [name.rsplit(".", 1)[1] for name in _exception_classes()]
    assert sorted({n for n in names if names.count(n) > 1}) == []


def test_the_refusals_every_face_translates() -> None:
    assert all(issubclass(kind, Refused) for kind in (NotFound, Conflict, Invalid))
    refused = Invalid("use_cases", "unknown use case(s): nope")
    assert (refused.field, refused.reason) == ("use_cases", "unknown use case(s): nope")
    assert str(refused) == "use_cases: unknown use case(s): nope"
