"""Who read patient data through the registry: one line per successful read, without the data.

Every read of studies, jobs and results that is answered logs one INFO line on
``hounsfield.registry.reads``: the caller's subject and role, the route's template
(``GET /studies/{study_uid}``, never the path that was asked, which carries a UID) and how many items
the answer holds. Nothing of the items, nor of the query (a ``study_uid`` filter is a UID): no patient
IDs, names, accession numbers or UIDs. A refused read (401, 403, 404, 422) is not logged here.
"""

from __future__ import annotations

import logging

from fastapi import Request
from fastapi.routing import APIRoute

from hounsfield.access import Principal

__all__ = ["READS_LOGGER", "log_read"]

READS_LOGGER = "hounsfield.registry.reads"
"""The logger of the reads (a site may send it to its own file or collector)."""

logger = logging.getLogger(READS_LOGGER)


def log_read(request: Request, count: int) -> None:
    """Log that ``request`` (of a route behind a role check, which left its principal) was answered with
    ``count`` items."""
    principal: Principal = request.state.principal
    route = request.scope.get("route")
    template = route.path_format if isinstance(route, APIRoute) else "(no route)"
    logger.info(
        "%s %s read by %s (%s): %d item(s)", request.method, template, principal.subject, principal.role.value, count
    )
