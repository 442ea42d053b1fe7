"""End-to-end fixtures: a local Orthanc per module, and ``hounsfield up`` against it."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest

from hounsfield.demo.orthanc import LocalOrthanc
from hounsfield.demo.stack import HounsfieldStack
from tests.services.db import postgres


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalOrthanc]:
    orthanc = LocalOrthanc(tmp_path_factory.mktemp("orthanc"), aet="TESTPACS")
    orthanc.start()
    yield orthanc
    orthanc.stop()


@contextmanager
def running_stack(
    tmp_path_factory: pytest.TempPathFactory, pacs: LocalOrthanc, request: pytest.FixtureRequest, **options: Any
) -> Iterator[HounsfieldStack]:
    """``hounsfield up`` sending to ``pacs``; its database on PostgreSQL in make test's second pass.

    The end of its log is written to stderr when it stops (pytest shows it for a failed test).
    """
    with ExitStack() as cleanup:
        database_url = None
        if postgres.whole_suite_on_postgres():
            server = request.getfixturevalue("postgres_server")
            database_url = cleanup.enter_context(postgres.scratch_database(server))
        running = HounsfieldStack(tmp_path_factory.mktemp("hounsfield"), pacs, database_url=database_url, **options)
        try:
            running.start()
            yield running
        finally:
            running.stop()
            log = running.folder / "hounsfield.log"
            if log.exists():
                sys.stderr.write(log.read_text()[-4000:])
