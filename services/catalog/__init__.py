"""The domain: what Hounsfield knows about models and where they run.

Framework-free service functions over a database session; the registry's HTTP API and the
``hounsfield`` command are thin faces over them, the router and the worker read
:mod:`~hounsfield.catalog.read_model`. Every write is audited (:func:`hounsfield.access.record`) in
its own transaction; refusals are :mod:`hounsfield.errors`' :class:`NotFound`, :class:`Conflict` and
:class:`Invalid`.

- :mod:`~hounsfield.catalog.taxonomy`: the radiology AI use cases (``taxonomy.yaml``, seeded at start).
- :mod:`~hounsfield.catalog.manifests`: MONAI Application Package manifests: parsed, checked, digested.
- :mod:`~hounsfield.catalog.models`: models filed under use cases, and their versions from MAPs.
- :mod:`~hounsfield.catalog.latency`: which versions serve a use case, and how fast they have been.
- :mod:`~hounsfield.catalog.rules`: routing rules as stored, named data.
- :mod:`~hounsfield.catalog.deployments`: deployments and their lifecycle (draft to clinical to retired),
  and the deployments the configuration file declares.
- :mod:`~hounsfield.catalog.read_model`: :class:`DeploymentSpec`, what the router and worker read.
- :mod:`~hounsfield.catalog.schemas`: the shapes requests and answers take.
- :mod:`~hounsfield.catalog.startup`: :func:`open_database`, migrated, seeded and synced.
"""

from hounsfield.catalog.deployments import DeploymentChecksFailed
from hounsfield.catalog.manifests import ManifestInvalid, load_map, parse_manifests
from hounsfield.catalog.read_model import DeploymentSpec, get_spec, load_deployments
from hounsfield.catalog.startup import open_database, prepare_database

__all__ = [
    "DeploymentChecksFailed",
    "DeploymentSpec",
    "ManifestInvalid",
    "get_spec",
    "load_deployments",
    "load_map",
    "open_database",
    "parse_manifests",
    "prepare_database",
]
