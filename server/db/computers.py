"""Computers: registration records, acceptance, removal and tags.

The message system's exchange bookkeeping (tokens, sequences, accepted types)
lives on the same rows but is handled by ``server.messagesystem``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Iterable, Sequence

import sqlalchemy as sa

from server.db.tables import computer_tags, computers

PENDING = "pending"
ACCEPTED = "accepted"


def hash_secret(secret: bytes | str) -> str:
    """sha256 hex of a secret (secure id, token, API key): what is stored."""
    if isinstance(secret, str):
        secret = secret.encode("utf-8")
    return hashlib.sha256(secret).hexdigest()


@dataclass(frozen=True)
class Computer:
    id: int
    status: str
    title: str
    hostname: str
    account_name: str
    access_group: str | None
    vm_info: str
    container_info: str
    machine_id: str | None
    clone_of_id: int | None
    registered_at: dt.datetime
    accepted_at: dt.datetime | None
    removed_at: dt.datetime | None
    last_seen: dt.datetime | None
    tags: tuple[str, ...]

    @property
    def insecure_id(self) -> int:
        return self.id


@dataclass(frozen=True)
class NewComputer:
    title: str
    hostname: str
    account_name: str
    secure_id: bytes
    accepted: bool
    tags: Sequence[str] = ()
    access_group: str | None = None
    vm_info: str = ""
    container_info: str = ""
    machine_id: str | None = None
    ubuntu_pro_info: str | None = None
    clone_of_id: int | None = None


class ComputerNotFound(LookupError):
    def __init__(self, computer_id: int):
        super().__init__(f"no computer {computer_id}")
        self.computer_id = computer_id


_FIELDS = [f for f in Computer.__dataclass_fields__ if f != "tags"]


class ComputersConnector:
    def __init__(self, db):
        self.db = db

    def _tags_thd(self, conn, ids: Iterable[int]) -> dict[int, tuple[str, ...]]:
        ids = list(ids)
        out: dict[int, list[str]] = {i: [] for i in ids}
        if ids:
            for cid, tag in conn.execute(
                sa.select(computer_tags.c.computer_id, computer_tags.c.tag)
                .where(computer_tags.c.computer_id.in_(ids))
                .order_by(computer_tags.c.tag)
            ):
                out[cid].append(tag)
        return {k: tuple(v) for k, v in out.items()}

    def _rows_to_computers(self, conn, rows) -> list[Computer]:
        rows = list(rows)
        tags = self._tags_thd(conn, [r.id for r in rows])
        return [Computer(**{f: r._mapping[f] for f in _FIELDS}, tags=tags[r.id]) for r in rows]

    def get(self, computer_id: int):
        return self.db.run(self.get_thd, computer_id)

    def get_thd(self, conn, computer_id: int, *, include_removed: bool = False) -> Computer:
        q = sa.select(computers).where(computers.c.id == computer_id)
        if not include_removed:
            q = q.where(computers.c.removed_at.is_(None))
        row = conn.execute(q).first()
        if row is None:
            raise ComputerNotFound(computer_id)
        return self._rows_to_computers(conn, [row])[0]

    def get_by_secure_id_thd(self, conn, secure_id: bytes | str) -> Computer | None:
        row = conn.execute(
            sa.select(computers).where(computers.c.secure_id_hash == hash_secret(secure_id))
        ).first()
        return None if row is None else self._rows_to_computers(conn, [row])[0]

    def list(self, **kw):
        return self.db.run(self.list_thd, **kw)

    def list_thd(
        self, conn, *, status: str | None = None, tag: str | None = None, limit: int = 100, offset: int = 0
    ) -> tuple[int, list[Computer]]:
        where = [computers.c.removed_at.is_(None)]
        if status is not None:
            where.append(computers.c.status == status)
        if tag is not None:
            where.append(computers.c.id.in_(sa.select(computer_tags.c.computer_id).where(computer_tags.c.tag == tag)))
        count = conn.execute(sa.select(sa.func.count()).select_from(computers).where(*where)).scalar_one()
        rows = conn.execute(sa.select(computers).where(*where).order_by(computers.c.id).limit(limit).offset(offset))
        return count, self._rows_to_computers(conn, rows)

    def create(self, new: NewComputer, now: dt.datetime):
        return self.db.run(self.create_thd, new, now)

    def create_thd(self, conn, new: NewComputer, now: dt.datetime) -> Computer:
        cid = conn.execute(
            computers.insert()
            .returning(computers.c.id)
            .values(
                secure_id_hash=hash_secret(new.secure_id),
                status=ACCEPTED if new.accepted else PENDING,
                title=new.title,
                hostname=new.hostname,
                account_name=new.account_name,
                access_group=new.access_group,
                vm_info=new.vm_info,
                container_info=new.container_info,
                machine_id=new.machine_id,
                ubuntu_pro_info=new.ubuntu_pro_info,
                clone_of_id=new.clone_of_id,
                registered_at=now,
                accepted_at=now if new.accepted else None,
            )
        ).scalar_one()
        self.set_tags_thd(conn, cid, new.tags)
        return self.get_thd(conn, cid)

    def create_many_thd(self, conn, news: Sequence[NewComputer], now: dt.datetime) -> list[int]:
        """Bulk registration (benchmarks and imports)."""
        rows = [
            dict(
                secure_id_hash=hash_secret(n.secure_id), status=ACCEPTED if n.accepted else PENDING,
                title=n.title, hostname=n.hostname, account_name=n.account_name, access_group=n.access_group,
                vm_info=n.vm_info, container_info=n.container_info, machine_id=n.machine_id,
                ubuntu_pro_info=n.ubuntu_pro_info, clone_of_id=n.clone_of_id, registered_at=now,
                accepted_at=now if n.accepted else None,
            )
            for n in news
        ]
        ids = [r.id for r in conn.execute(computers.insert().returning(computers.c.id, sort_by_parameter_order=True), rows)]
        tag_rows = [{"computer_id": i, "tag": t} for i, n in zip(ids, news) for t in sorted(set(n.tags))]
        if tag_rows:
            conn.execute(computer_tags.insert(), tag_rows)
        return ids

    def accept(self, computer_id: int, now: dt.datetime):
        return self.db.run(self.accept_thd, computer_id, now)

    def accept_thd(self, conn, computer_id: int, now: dt.datetime) -> Computer:
        c = self.get_thd(conn, computer_id)
        if c.status != ACCEPTED:
            conn.execute(
                computers.update()
                .where(computers.c.id == computer_id, computers.c.status == PENDING)
                .values(status=ACCEPTED, accepted_at=now)
            )
        return self.get_thd(conn, computer_id)

    def remove_thd(self, conn, computer_id: int, now: dt.datetime) -> Computer:
        """Revoke the secure id and mark the computer removed. The caller ends its
        non-final activities (``server.db.activities``) in the same transaction."""
        c = self.get_thd(conn, computer_id)
        conn.execute(
            computers.update()
            .where(computers.c.id == computer_id)
            .values(removed_at=now, secure_id_hash=None, exchange_token_hash=None)
        )
        return c

    def set_tags(self, computer_id: int, tags: Sequence[str]):
        return self.db.run(self.set_tags_thd, computer_id, tags)

    def set_tags_thd(self, conn, computer_id: int, tags: Sequence[str]) -> None:
        conn.execute(computer_tags.delete().where(computer_tags.c.computer_id == computer_id))
        wanted = sorted(set(tags))
        if wanted:
            conn.execute(computer_tags.insert(), [{"computer_id": computer_id, "tag": t} for t in wanted])

    def resolve_thd(
        self, conn, *, ids: Sequence[int] = (), tags: Sequence[str] = ()
    ) -> tuple[list[int], list[int], list[int]]:
        """Which computers a request names: (found ids, missing ids, pending ids).

        ``ids`` are taken as given; ``tags`` match computers having any of them.
        Removed computers count as missing.
        """
        wanted: set[int] = set(ids)
        found: dict[int, str] = {}
        if ids:
            for i in range(0, len(ids), 5000):
                chunk = list(ids)[i:i + 5000]
                found.update(conn.execute(
                    sa.select(computers.c.id, computers.c.status)
                    .where(computers.c.id.in_(chunk), computers.c.removed_at.is_(None))
                ).all())
        if tags:
            for cid, status in conn.execute(
                sa.select(computers.c.id, computers.c.status).where(
                    computers.c.removed_at.is_(None),
                    computers.c.id.in_(sa.select(computer_tags.c.computer_id).where(computer_tags.c.tag.in_(list(tags)))),
                )
            ):
                found[cid] = status
                wanted.add(cid)
        missing = sorted(wanted - found.keys())
        pending = sorted(i for i, s in found.items() if s != ACCEPTED)
        return sorted(found), missing, pending
