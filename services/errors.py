"""One root for everything Hounsfield refuses or cannot do, and the refusals every face translates.

Every exception class Hounsfield defines derives from :class:`HounsfieldError`; its name says what
was refused or what failed, and its message says why in words that never carry patient data. Where
callers rely on a built-in family as well (``except OSError`` around a disk write, ``except
ValueError`` around parsing), a class derives from both.

Three refusals of a request are shared by every room, and each face translates them once: the
registry in one exception handler (:func:`hounsfield.registry.app.add_exception_handlers`), the CLI by
printing the reason and exiting non-zero.

- :class:`NotFound`: no such use case, model, version, rule, deployment, job (HTTP 404);
- :class:`Conflict`: contradicts what is stored, or the state something is in (HTTP 409);
- :class:`Invalid`: a field only the domain can judge is wrong (HTTP 422, in FastAPI's validation shape).

Subclasses add detail (:class:`~hounsfield.catalog.manifests.ManifestInvalid` names each file and
field; :class:`~hounsfield.catalog.deployments.DeploymentChecksFailed` carries every check); no route
catches them.
"""

from __future__ import annotations

__all__ = ["Conflict", "HounsfieldError", "Invalid", "NotFound", "Refused"]


class HounsfieldError(Exception):
    """Something Hounsfield refused or could not do; the message says what and why."""


class Refused(HounsfieldError):
    """A request the domain refuses: :class:`NotFound`, :class:`Conflict` or :class:`Invalid`."""


class NotFound(Refused, LookupError):
    """No such thing (use case, model, version, rule, deployment, job)."""


class Conflict(Refused):
    """The request contradicts what is stored (a name taken, a published version with other content) or
    the state something is in (a retired deployment promoted, results withdrawn for another reason)."""


class Invalid(Refused, ValueError):
    """A field of the request is wrong in a way only the domain can tell (e.g. an unknown use case)."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")
