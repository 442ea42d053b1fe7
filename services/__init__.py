"""Hounsfield: from a trained MONAI model to a result in the hospital's PACS.

Installed from the repository's ``services/`` folder. The rooms, in layers from the top
(docs/architecture.md): the ``hounsfield`` command (:mod:`.cli`), ``hounsfield up`` (:mod:`.supervisor`)
and the demo; the registry's HTTP face (:mod:`.registry`); the listener, worker, router and exporter;
the domain (:mod:`.catalog`, :mod:`.queues`, :mod:`.access`); the ground (:mod:`.config`, :mod:`.db`,
:mod:`.store`, :mod:`.dicom_status`, :mod:`.logs`, :mod:`.contracts`, :mod:`.errors`).
"""

__version__ = "0.1.0"
