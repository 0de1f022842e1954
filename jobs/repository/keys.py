"""Tenants and API keys: create, list and revoke keys, and `authenticate` a presented one.

A key is ``rt_<key_id>_<secret>``; only an argon2 hash of the secret is stored. ``_hasher`` and
``_dummy_hash`` are read from this module at call time (tests swap in a cheap hasher here).
"""

from __future__ import annotations

import dataclasses
import secrets
import threading
from datetime import datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from jobs.models import ApiKey, Tenant, new_id, utcnow

LOCAL_TENANT = "local"
KEY_PREFIX = "rt"

_hasher = PasswordHasher()


def get_or_create_tenant(session: Session, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(id=new_id(), name=name, created_at=utcnow())
        session.add(tenant)
        session.flush()
    return tenant


@dataclasses.dataclass(frozen=True)
class ApiKeyInfo:
    """A key as `list_api_keys` shows it: never the secret."""

    id: str
    tenant: str
    created_at: datetime
    revoked_at: datetime | None


def create_api_key(session: Session, tenant_name: str) -> tuple[str, str]:
    """Create a key for ``tenant_name`` (the tenant too, if new); return ``(key_id, key)``.

    The key is ``rt_<key_id>_<secret>``; only an argon2 hash of the secret is stored, so the key can
    be shown once and never again.
    """
    tenant = get_or_create_tenant(session, tenant_name)
    key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    session.add(ApiKey(id=key_id, tenant_id=tenant.id, secret_hash=_hasher.hash(secret), created_at=utcnow()))
    session.flush()
    return key_id, f"{KEY_PREFIX}_{key_id}_{secret}"


def list_api_keys(session: Session) -> list[ApiKeyInfo]:
    rows = session.execute(
        select(ApiKey, Tenant.name).join(Tenant, ApiKey.tenant_id == Tenant.id).order_by(ApiKey.created_at)
    )
    return [ApiKeyInfo(k.id, name, k.created_at, k.revoked_at) for k, name in rows]


def revoke_api_key(session: Session, key_id: str) -> bool:
    """Revoke the key; False if there is no such key. Revoking twice keeps the first time."""
    key = session.get(ApiKey, key_id)
    if key is None:
        return False
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.flush()
    return True


def parse_api_key(key: str) -> tuple[str, str] | None:
    """``(key_id, secret)`` of a well-formed key, else None."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


_dummy_hash: str | None = None
_dummy_lock = threading.Lock()


def _dummy() -> str:
    """The hash an unknown key is verified against, made once: concurrent first failures (a flood)
    must not each pay an argon2 hash on top of their verification."""
    global _dummy_hash
    with _dummy_lock:
        if _dummy_hash is None:
            _dummy_hash = _hasher.hash(secrets.token_urlsafe(32))
        return _dummy_hash


def authenticate(session: Session, key: str) -> str | None:
    """The tenant id of a valid, unrevoked key; None otherwise.

    argon2's verification compares in constant time; an unknown key id still pays one verification
    (against a dummy hash) so response times do not reveal which key ids exist.
    """
    parsed = parse_api_key(key)
    row = session.get(ApiKey, parsed[0]) if parsed else None
    if row is None or row.revoked_at is not None:
        _verify(_dummy(), parsed[1] if parsed else key)
        return None
    return row.tenant_id if _verify(row.secret_hash, parsed[1]) else None


def _verify(hash_: str, secret: str) -> bool:
    try:
        return _hasher.verify(hash_, secret)
    except (VerificationError, InvalidHashError):
        return False
