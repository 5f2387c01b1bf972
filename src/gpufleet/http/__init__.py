"""The HTTP kit every capability builds its API, pages and CLI on: the error envelope
(``errors``), agent tokens and the admin key (``auth``), the request context (``context``),
the CLI's helpers for finding the data dir and a running server (``local``), and the pages'
Jinja2 environment (``templates``, ``format``).

It sits below every capability and imports none of them (scripts/fences.py)."""
