"""The DICOM listener: C-ECHO and C-STORE, durable storage, indexing and study completeness."""
