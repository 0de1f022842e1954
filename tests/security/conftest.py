"""Fixtures for the input and security tests: the API suite's ``service`` (a real app on SQLite and
PostgreSQL with two tenants, alice and bob, and a cheap argon2), imported from tests/api (see
`security_support`); pytest collects fixtures imported into a conftest as if defined here.

``make_settings`` and ``Service`` are re-exported too: tests/api/test_service_api.py does ``from
conftest import make_settings``, and when pytest is given ``tests/api tests/security`` it loads both
conftests before collecting, so the module named ``conftest`` may be this one.
"""

from __future__ import annotations

from security_support import Service, fast_argon2, make_settings, service

__all__ = ["Service", "fast_argon2", "make_settings", "service"]
