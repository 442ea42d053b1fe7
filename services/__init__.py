"""Hounsfield services: listener, router, worker, exporter, registry and the ``hounsfield`` command."""

__version__ = "0.1.0"
