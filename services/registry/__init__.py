"""The registry: the HTTP API over studies, jobs and results."""
