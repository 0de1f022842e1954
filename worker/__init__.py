"""The worker side: the Celery app (`worker.app`), the producer (`worker.enqueue`), the task
(`worker.tasks`, a shell around `worker.runner`), the reaper (`worker.reaper`) and the process that
runs them (`worker.process`, ``revtune worker``).

This package file imports nothing: the API imports `worker.enqueue`, and must not pull in JAX.
"""
