"""The router: routing rules x deployments -> jobs on the Celery queues."""
