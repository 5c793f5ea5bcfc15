"""Attachments: files uploaded through the REST API and referenced by activities
(for example ``execute-script``'s ``attachments`` parameter).

The content lives in the database so that every server process can serve it.
An activity links the attachments it uses (``activity_attachments``), which is
how the message system decides that a computer may fetch one.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Iterable

import sqlalchemy as sa

from server.db.tables import activities, activity_attachments, attachments


@dataclass(frozen=True)
class Attachment:
    """An attachment's metadata (never its content)."""

    id: int
    name: str
    size: int
    sha256: str
    creator: str
    created_at: dt.datetime


class AttachmentNotFound(LookupError):
    def __init__(self, attachment_id: int):
        super().__init__(f"no attachment {attachment_id}")
        self.attachment_id = attachment_id


_META = [attachments.c.id, attachments.c.name, attachments.c.size, attachments.c.sha256,
         attachments.c.creator, attachments.c.created_at]


def _row(row) -> Attachment:
    return Attachment(**{c.name: row._mapping[c.name] for c in _META})


class AttachmentsConnector:
    """Store, look up and authorise attachments. Public methods return Deferreds."""

    def __init__(self, db):
        self.db = db

    def create(self, name: str, data: bytes, creator: str, now: dt.datetime):
        return self.db.run(self.create_thd, name, data, creator, now)

    def create_thd(self, conn, name: str, data: bytes, creator: str, now: dt.datetime) -> Attachment:
        digest = hashlib.sha256(data).hexdigest()
        aid = conn.execute(
            attachments.insert().returning(attachments.c.id).values(
                name=name, size=len(data), sha256=digest, data=data, creator=creator, created_at=now)
        ).scalar_one()
        return Attachment(id=aid, name=name, size=len(data), sha256=digest, creator=creator, created_at=now)

    def get(self, attachment_id: int):
        return self.db.run(self.get_thd, attachment_id)

    def get_thd(self, conn, attachment_id: int) -> Attachment:
        row = conn.execute(sa.select(*_META).where(attachments.c.id == attachment_id)).first()
        if row is None:
            raise AttachmentNotFound(attachment_id)
        return _row(row)

    def data_thd(self, conn, attachment_id: int) -> bytes:
        data = conn.execute(sa.select(attachments.c.data).where(attachments.c.id == attachment_id)).scalar()
        if data is None:
            raise AttachmentNotFound(attachment_id)
        return bytes(data)

    def existing_ids_thd(self, conn, ids: Iterable[int]) -> set[int]:
        """Which of ``ids`` exist."""
        ids = sorted(set(ids))
        if not ids:
            return set()
        return set(conn.execute(sa.select(attachments.c.id).where(attachments.c.id.in_(ids))).scalars())

    def computer_may_fetch_thd(self, conn, computer_id: int, attachment_id: int) -> bool:
        """Whether an activity of ``computer_id`` uses the attachment (the message
        system serves an attachment only to such a computer)."""
        row = conn.execute(
            sa.select(sa.literal(1))
            .select_from(activity_attachments.join(activities, activities.c.id == activity_attachments.c.activity_id))
            .where(activity_attachments.c.attachment_id == attachment_id, activities.c.computer_id == computer_id)
            .limit(1)
        ).first()
        return row is not None
