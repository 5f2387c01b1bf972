"""Ingest workers: processes that take agents' connections off the server's event loop.

One Python process answers ingest on one core at most (one GIL). With workers, each agent
connection is handed over (file descriptor passing) to a worker process that validates,
logs (fsync) and acknowledges its batches on its own core; the server moves the workers'
logs into the store and live state a few times a second. ``pool`` is the server's side,
``worker`` the worker process, ``logwriter`` its durable log, ``channel`` the socket pair
between them. See docs/storage.md, "Ingest workers".
"""
