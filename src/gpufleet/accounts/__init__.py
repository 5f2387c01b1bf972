"""Web and API accounts: users with roles (viewer < user < admin), passwords hashed with scrypt,
sessions in signed cookies, CSRF tokens for forms, and login rate limiting.

Agent tokens (ingest) and the local admin key (the CLI on the server's machine) live in
``gpufleet.http.auth``; this package is about people using the web UI and the API.
"""

from __future__ import annotations

from gpufleet.accounts.users import ROLES, has_role

__all__ = ["ROLES", "has_role"]
