"""The message system: Landscape's client protocol on the server.

``make_resources(context)`` returns the three resources ``server.web`` mounts:
``b"message-system"`` (the exchange), ``b"ping"`` and ``b"attachment"``. It also
registers the cancel listener that tells an agent to stop an in-progress
activity (``cancel-activity``), and warns when any computer may register.

The protocol's rules come from ``protocol/`` (bpickle, payloads, sequence
rules, message builders); ``spec/message-system.md`` is the reference. How an
exchange runs: ``server.messagesystem.exchange``.
"""

from __future__ import annotations

import datetime as dt

from twisted.web.resource import IResource

from protocol import messages as pm
from server import states
from server.messagesystem.exchange import MessageSystem
from server.messagesystem.resources import AttachmentResource, ExchangeResource, PingResource

__all__ = ["MessageSystem", "make_cancel_listener", "make_resources"]


def make_cancel_listener(db, log=None):
    """A listener for ``ActivitiesConnector.cancel_listeners``.

    When an in-progress client activity is canceled, it queues
    ``{"type": "cancel-activity", "target-operation-id": id}`` in that computer's
    outbox, in the cancel's own transaction, if the computer's agent lists
    ``cancel-activity`` in its ``client-accepted-types``. A plain landscape-client
    gets nothing: the activity stays provisionally canceled until its result or
    its answer deadline.
    """

    def on_cancel(conn, activity, now: dt.datetime) -> None:
        if (activity.kind != states.CLIENT or activity.state != states.IN_PROGRESS
                or activity.computer_id is None):
            return
        types = db.exchange.client_accepted_types_thd(conn, activity.computer_id)
        if "cancel-activity" not in types:
            return
        db.outbox.append_thd(conn, activity.computer_id, [pm.cancel_activity(activity.id)], now, [activity.id])
        if log is not None:
            log.info("activity {id} canceled while in progress: cancel-activity queued for computer {cid}",
                     id=activity.id, cid=activity.computer_id)

    on_cancel.ridgeline_message_system = True  # lets install_cancel_listener stay idempotent
    return on_cancel


def install_cancel_listener(db, log=None) -> None:
    """Register the cancel listener on ``db.activities`` once."""
    listeners = db.activities.cancel_listeners
    if not any(getattr(f, "ridgeline_message_system", False) for f in listeners):
        listeners.append(make_cancel_listener(db, log))


def make_resources(context) -> dict[bytes, IResource]:
    """The message system's resources, keyed by top-level path segment."""
    ms = MessageSystem(context)
    install_cancel_listener(context.db, context.log)
    if context.config.registration_key is None:
        context.log.warn(
            "no registration key is set: every computer that registers with account {account!r} is accepted "
            "at once (set registration_key to hold unknown computers pending)",
            account=context.config.account_name,
        )
    return {
        b"message-system": ExchangeResource(ms),
        b"ping": PingResource(ms),
        b"attachment": AttachmentResource(ms),
    }
