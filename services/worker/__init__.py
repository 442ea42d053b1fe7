"""The worker: Celery tasks that run MONAI Deploy applications on studies."""
