"""The benchmarks' tests: a local Orthanc per module (tests/e2e's fixture) for the stacks they start."""

from tests.e2e.conftest import pacs

__all__ = ["pacs"]
