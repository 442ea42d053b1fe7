"""From a trained MONAI model to a running MAP: what ``hounsfield map`` does.

- :mod:`.scaffold`: ``new``, an App SDK application from templates (a TorchScript model or a MONAI bundle);
- :mod:`.bundle`: MONAI bundles as ``new --bundle`` takes them, and one made around a TorchScript model;
- :mod:`.validate`: ``validate``, an application folder or MAP image against the MAP spec, each problem
  with where it is and how to fix it;
- :mod:`.running`: ``run``, the application on a folder of DICOM as a worker runs it, its results through
  the validation gate;
- :mod:`.package`: ``package``, the MAP as an OCI image with the spec's layout and labels;
- :mod:`.publish`: ``publish``, the version registered in the registry with its image digest.
"""
