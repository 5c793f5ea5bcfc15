"""REST API keys (table ``api_keys``).

A key is shown once, when created; only its sha256 is stored. Looking a key up
by its hash compares nothing byte by byte in Python, so the time taken says
nothing about how close a wrong key was. Names are unique forever: a revoked
key keeps its name, so ``list`` shows who had access.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
from dataclasses import dataclass

import sqlalchemy as sa

from server.db.tables import api_keys

KEY_PREFIX = "rl_"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,199}")
# ``last_used_at`` is advisory: refresh it at most this often, so that
# authenticating a busy client is a read, not a write per request.
LAST_USED_RESOLUTION = dt.timedelta(minutes=1)


def _shown(name: object) -> str:
    """``name`` for an error message: an over-long one is cut (and its length said)
    so that a mistaken paste does not fill the terminal."""
    if isinstance(name, str) and len(name) > 60:
        return f"{name[:40]!r}... ({len(name)} characters)"
    return repr(name)


class ApiKeyError(ValueError):
    """An API key operation was refused; the message says why, on one line."""


class DuplicateApiKeyName(ApiKeyError):
    pass


class UnknownApiKey(ApiKeyError, LookupError):
    pass


@dataclass(frozen=True)
class ApiKey:
    """One API key, without its secret."""

    id: int
    name: str
    created_at: dt.datetime
    last_used_at: dt.datetime | None
    revoked_at: dt.datetime | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _row(row) -> ApiKey:
    return ApiKey(
        id=row.id, name=row.name, created_at=row.created_at,
        last_used_at=row.last_used_at, revoked_at=row.revoked_at,
    )


class ApiKeysConnector:
    """Create, list, revoke and authenticate API keys. Methods return Deferreds."""

    def __init__(self, db):
        self.db = db

    def create(self, name: str, now: dt.datetime):
        """Deferred of ``(ApiKey, secret)``; the secret is never stored or shown again.

        Fails with ``ApiKeyError`` for a malformed name and ``DuplicateApiKeyName``
        when the name is taken (revoked keys keep theirs).
        """
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            from twisted.internet import defer

            return defer.fail(ApiKeyError(
                f"invalid API key name {_shown(name)}: use 1-200 letters, digits and . _ @ + - "
                "(starting with a letter or digit)"
            ))
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        return self.db.run(self.create_thd, name, secret, now)

    def create_thd(self, conn: sa.Connection, name: str, secret: str, now: dt.datetime):
        taken = conn.execute(sa.select(api_keys.c.id).where(api_keys.c.name == name)).first()
        if taken is not None:
            raise DuplicateApiKeyName(f"an API key named {name!r} already exists")
        key_id = conn.execute(
            api_keys.insert().values(name=name, key_hash=hash_key(secret), created_at=now)
        ).inserted_primary_key[0]
        row = conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).one()
        return _row(row), secret

    def list(self):
        """Deferred of every key (revoked ones too), oldest first."""
        return self.db.run(self.list_thd)

    def list_thd(self, conn: sa.Connection) -> list[ApiKey]:
        return [_row(r) for r in conn.execute(sa.select(api_keys).order_by(api_keys.c.id))]

    def revoke(self, name: str, now: dt.datetime):
        """Deferred of the revoked ``ApiKey``; ``UnknownApiKey`` if no such key,
        ``ApiKeyError`` if it was already revoked."""
        return self.db.run(self.revoke_thd, name, now)

    def revoke_thd(self, conn: sa.Connection, name: str, now: dt.datetime) -> ApiKey:
        row = conn.execute(sa.select(api_keys).where(api_keys.c.name == name)).first()
        if row is None:
            raise UnknownApiKey(f"no API key named {name!r}")
        if row.revoked_at is not None:
            raise ApiKeyError(f"the API key {name!r} is already revoked")
        conn.execute(api_keys.update().where(api_keys.c.id == row.id).values(revoked_at=now))
        return _row(conn.execute(sa.select(api_keys).where(api_keys.c.id == row.id)).one())

    def authenticate(self, key: str, now: dt.datetime):
        """Deferred of the ``ApiKey`` a presented secret belongs to, or None
        (unknown, malformed or revoked). Records the use."""
        return self.db.run(self.authenticate_thd, key, now)

    def authenticate_thd(self, conn: sa.Connection, key: str, now: dt.datetime) -> ApiKey | None:
        if not isinstance(key, str) or not key.startswith(KEY_PREFIX) or len(key) > 200:
            return None
        row = conn.execute(
            sa.select(api_keys).where(api_keys.c.key_hash == hash_key(key), api_keys.c.revoked_at.is_(None))
        ).first()
        if row is None:
            return None
        if row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION:
            conn.execute(api_keys.update().where(api_keys.c.id == row.id).values(last_used_at=now))
            row = conn.execute(sa.select(api_keys).where(api_keys.c.id == row.id)).one()
        return _row(row)
