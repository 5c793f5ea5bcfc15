"""Message types of the exchange: schemas that validate and normalise, and builders.

Every message is a dict with a ``type``. A receiver passes each decoded message
through one validator:

- the **server** uses :func:`validate_client_message` (client → server:
  ``register``, ``operation-result``, ``resynchronize``);
- the **agent** uses :func:`validate_server_message` (server → client:
  ``set-id``, ``unknown-id``, ``registration``, ``accepted-types``,
  ``resynchronize``, ``set-intervals``, ``execute-script`` and Ridgeline's
  ``cancel-activity``).

A validator returns a *new* dict: ``type`` as ``str``; for a known type every
field of its schema under its wire name (an absent optional field is ``None``),
values converted to one type (see each schema), unknown keys dropped. For
``register`` the two shapes landscape sends (the broker's hyphenated one and
``landscape-config``'s underscored one) come out as one underscored shape; see
:func:`validate_client_message`. A bad message raises :class:`MessageError`
naming the first bad field.

Senders build messages with the builder functions (:func:`set_id`,
:func:`operation_result`, ...), which produce exactly the wire types a real
landscape-client needs: ``bytes`` for secure ids, tokens and API versions,
``str`` for message types and for the ``accepted-types`` list, plain ``int``
(never ``bool`` or ``IntEnum``) for numbers.

Capability negotiation: :data:`RIDGELINE_EXTENSION_TYPES` are sent only to an
agent that lists them in ``client-accepted-types``; a plain landscape-client
never receives them.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Mapping

from protocol import codes

__all__ = [
    "CLIENT_MESSAGE_TYPES",
    "MIN_INTERVAL",
    "RIDGELINE_EXTENSION_TYPES",
    "SERVER_MESSAGE_TYPES",
    "MessageError",
    "accepted_types",
    "cancel_activity",
    "execute_script",
    "operation_result",
    "register",
    "registration",
    "resynchronize",
    "set_id",
    "set_intervals",
    "unknown_id",
    "validate_client_message",
    "validate_server_message",
]

#: Types a client sends that the server understands (others are kept or ignored).
CLIENT_MESSAGE_TYPES = frozenset({"register", "operation-result", "resynchronize"})
#: Types the server sends.
SERVER_MESSAGE_TYPES = frozenset(
    {
        "set-id",
        "unknown-id",
        "registration",
        "accepted-types",
        "resynchronize",
        "set-intervals",
        "execute-script",
        "cancel-activity",
    }
)
#: Ridgeline's own server → client types, sent only to agents that list them in
#: ``client-accepted-types``.
RIDGELINE_EXTENSION_TYPES = frozenset({"cancel-activity"})
#: The smallest interval the server may send in ``set-intervals``, in seconds:
#: landscape-client's scheduler crashes below it.
MIN_INTERVAL = 10

#: ``registration`` ``info`` values landscape-config treats as a clean failure.
REGISTRATION_UNKNOWN_ACCOUNT = "unknown-account"
REGISTRATION_MAX_PENDING_COMPUTERS = "max-pending-computers"

# A tag as landscape-client accepts it.
_TAG = re.compile(r"\w+[\w-]*")
#: The longest tag (the server stores tags in a 200-character column).
MAX_TAG_LENGTH = 200
#: Operation ids are 64-bit signed integers in both sides' databases.
MAX_OPERATION_ID = 2**63 - 1
# Result codes are 32-bit signed integers in the server's database.
_INT32 = (-(2**31), 2**31 - 1)


class MessageError(ValueError):
    """A message that does not match its type's schema.

    ``message_type`` is the message's type (``None`` when the type itself is
    missing or bad); ``field`` the first bad field's wire name.
    """

    def __init__(self, message_type: str | None, field: str, problem: str) -> None:
        what = f"{message_type!r} message" if message_type else "message"
        super().__init__(f"{what}: field {field!r} {problem}")
        self.message_type = message_type
        self.field = field
        self.problem = problem


# --- field converters ---------------------------------------------------------------
# Each takes the wire value and returns the normalised one, or raises _Bad with
# the problem; the schema turns that into a MessageError naming the field.


class _Bad(Exception):
    pass


def _tname(value: object) -> str:
    return type(value).__name__


def _int(value: object) -> int:
    if type(value) is not int:
        raise _Bad(f"must be an int, not {_tname(value)}")
    return value


def _operation_id(value: object) -> int:
    if not 0 <= _int(value) <= MAX_OPERATION_ID:
        shown = value if value.bit_length() <= 200 else f"an int of {value.bit_length()} bits"  # type: ignore[union-attr]
        raise _Bad(f"must be between 0 and {MAX_OPERATION_ID}, not {shown}")
    return value  # type: ignore[return-value]


def _int32(value: object) -> int:
    if not _INT32[0] <= _int(value) <= _INT32[1]:
        shown = value if value.bit_length() <= 200 else f"an int of {value.bit_length()} bits"  # type: ignore[union-attr]
        raise _Bad(f"must be a 32-bit int, not {shown}")
    return value  # type: ignore[return-value]


def _non_negative_int(value: object) -> int:
    if _int(value) < 0:
        raise _Bad(f"must not be negative, not {value}")
    return value  # type: ignore[return-value]


def _text(value: object) -> str:
    """str; bytes are accepted when they are UTF-8 (landscape's Unicode field does this)."""
    if type(value) is str:
        return value
    if type(value) is bytes:
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise _Bad("is bytes that are not UTF-8") from None
    raise _Bad(f"must be a str, not {_tname(value)}")


def _raw(value: object) -> bytes:
    """bytes; a str is accepted and encoded as UTF-8."""
    if type(value) is bytes:
        return value
    if type(value) is str:
        return value.encode("utf-8")
    raise _Bad(f"must be bytes, not {_tname(value)}")


def _number(value: object) -> int | float:
    if type(value) not in (int, float):
        raise _Bad(f"must be a number, not {_tname(value)}")
    return value  # type: ignore[return-value]


def _optional(convert: Callable[[object], Any]) -> Callable[[object], Any]:
    def convert_or_none(value: object) -> Any:
        return None if value is None else convert(value)

    return convert_or_none


def _text_list(value: object) -> list[str]:
    if type(value) not in (list, tuple):
        raise _Bad(f"must be a list of str, not {_tname(value)}")
    out = []
    for i, item in enumerate(value):  # type: ignore[arg-type]
        try:
            out.append(_text(item))
        except _Bad as e:
            raise _Bad(f"item {i} {e}") from None
    return out


def _status(value: object) -> int:
    if _int(value) not in codes.STATUS_NAMES:
        raise _Bad(f"must be {codes.FAILED} (failed) or {codes.SUCCEEDED} (succeeded), not {value}")
    return value  # type: ignore[return-value]


def _interval(value: object) -> int:
    if _int(value) < 1:
        raise _Bad(f"must be at least 1 second, not {value}")
    return value  # type: ignore[return-value]


def _attachments(value: object) -> dict[str, int | str]:
    if type(value) is not dict:
        raise _Bad(f"must be a dict of file name to attachment id, not {_tname(value)}")
    out: dict[str, int | str] = {}
    for name, ref in value.items():
        if type(name) is not str or not name or "/" in name or name in (".", ".."):
            raise _Bad(f"has a bad file name {name!r}")
        if type(ref) is int:
            out[name] = ref
        else:
            try:
                out[name] = _text(ref)
            except _Bad:
                raise _Bad(f"entry {name!r} must be an attachment id (int) or inline text (str)") from None
    return out


def _env(value: object) -> dict[str, str]:
    if type(value) is not dict:
        raise _Bad(f"must be a dict of str to str, not {_tname(value)}")
    out = {}
    for name, text in value.items():
        if type(name) is not str or not name or "=" in name or "\0" in name:
            raise _Bad(f"has a bad variable name {name!r}")
        try:
            out[name] = _text(text)
        except _Bad as e:
            raise _Bad(f"variable {name!r} {e}") from None
        if "\0" in out[name]:
            raise _Bad(f"variable {name!r} contains a NUL character")
    return out


def _tags(value: object) -> list[str]:
    """landscape sends tags as one comma-separated str (or None): give a list."""
    text = _text(value)
    tags = [tag.strip() for tag in text.split(",")]
    tags = [tag for tag in tags if tag]
    for tag in tags:
        if len(tag) > MAX_TAG_LENGTH:
            raise _Bad(f"has a tag longer than {MAX_TAG_LENGTH} characters ({tag[:20]!r}...)")
        if not _TAG.fullmatch(tag):
            raise _Bad(f"has an invalid tag {tag!r} (letters, digits, '_' and '-', not first)")
    return tags


def _juju_info(value: object) -> dict:
    if type(value) is not dict:
        raise _Bad(f"must be a dict, not {_tname(value)}")
    return dict(value)


# --- schemas ------------------------------------------------------------------------

# A schema: wire name -> (converter, required). A required field with an
# _optional() converter is a key that must be present but may be None.
_Schema = Mapping[str, "tuple[Callable[[object], Any], bool]"]

_COMMON_CLIENT: _Schema = {
    # Added by landscape's broker to every message it queues.
    "api": (_raw, False),
    "timestamp": (_number, False),
}

_SERVER_SCHEMAS: dict[str, _Schema] = {
    "set-id": {"id": (_raw, True), "insecure-id": (_int, True)},
    "unknown-id": {"clone-of": (_optional(_text), False)},
    "registration": {"info": (_text, True)},
    "accepted-types": {"types": (_text_list, True)},
    "resynchronize": {"operation-id": (_operation_id, True), "scopes": (_optional(_text_list), False)},
    "set-intervals": {
        "exchange": (_optional(_interval), False),
        "urgent-exchange": (_optional(_interval), False),
        "ping": (_optional(_interval), False),
    },
    "execute-script": {
        "operation-id": (_operation_id, True),
        "interpreter": (_text, True),
        "code": (_text, True),
        "username": (_text, True),
        "time-limit": (_optional(_non_negative_int), True),
        "attachments": (_attachments, True),
        "env": (_optional(_env), False),
    },
    "cancel-activity": {"target-operation-id": (_operation_id, True)},
}

_CLIENT_SCHEMAS: dict[str, _Schema] = {
    "operation-result": {
        "operation-id": (_operation_id, True),
        "status": (_status, True),
        "result-code": (_optional(_int32), False),
        "result-text": (_optional(_text), False),
        **_COMMON_CLIENT,
    },
    "resynchronize": {"operation-id": (_optional(_operation_id), False), **_COMMON_CLIENT},
}

# register: normalised (underscored) name -> (wire names to look for, converter, required).
# The broker spells container-info/vm-info/juju-info with hyphens, landscape-config
# with underscores; everything else is underscored in both.
_REGISTER_FIELDS: tuple[tuple[str, tuple[str, ...], Callable[[object], Any], bool], ...] = (
    ("account_name", ("account_name",), _text, True),
    ("computer_title", ("computer_title",), _text, True),
    ("hostname", ("hostname",), _text, True),
    ("registration_password", ("registration_password",), _optional(_text), False),
    ("tags", ("tags",), _optional(_tags), False),
    ("container_info", ("container-info", "container_info"), _optional(_text), False),
    ("vm_info", ("vm-info", "vm_info"), _optional(_text), False),
    ("access_group", ("access_group",), _optional(_text), False),
    ("machine_id", ("machine_id",), _optional(_text), False),
    ("clone_secure_id", ("clone_secure_id",), _optional(_text), False),
    ("ubuntu_pro_info", ("ubuntu_pro_info",), _optional(_text), False),
    ("hostagent_uid", ("hostagent_uid",), _optional(_text), False),
    ("installation_request_id", ("installation_request_id",), _optional(_text), False),
    ("authenticated_attach_code", ("authenticated_attach_code",), _optional(_text), False),
    ("juju_info", ("juju-info", "juju_info"), _optional(_juju_info), False),
)


def _message_type(message: object) -> str:
    if type(message) is not dict:
        raise MessageError(None, "type", f"cannot be read: the message is a {_tname(message)}, not a dict")
    if "type" not in message:
        raise MessageError(None, "type", "is missing")
    try:
        mtype = _text(message["type"])
    except _Bad as e:
        raise MessageError(None, "type", str(e)) from None
    if not mtype:
        raise MessageError(None, "type", "is empty")
    return mtype


def _apply(mtype: str, schema: _Schema, message: dict) -> dict:
    out: dict = {"type": mtype}
    for key, (convert, required) in schema.items():
        if key not in message:
            if required:
                raise MessageError(mtype, key, "is missing")
            out[key] = None
            continue
        try:
            out[key] = convert(message[key])
        except _Bad as e:
            raise MessageError(mtype, key, str(e)) from None
    return out


def _unknown(mtype: str, message: dict) -> dict:
    out = dict(message)
    out["type"] = mtype
    if "operation-id" in message:
        try:
            _operation_id(message["operation-id"])
        except _Bad as e:
            raise MessageError(mtype, "operation-id", str(e)) from None
    return out


def _without_nul(out: dict) -> dict:
    """NUL characters replaced by U+FFFD in the str fields of a client message.

    A NUL is valid UTF-8 and real clients send it (script output); PostgreSQL
    text cannot hold it, so the server would fail the whole exchange forever.
    """
    for key, value in out.items():
        if type(value) is str and "\0" in value:
            out[key] = value.replace("\0", "\ufffd")
        elif type(value) is list:
            out[key] = [v.replace("\0", "\ufffd") if type(v) is str else v for v in value]
    return out


def _validate_register(message: dict) -> dict:
    out: dict = {"type": "register"}
    for name, wire_names, convert, required in _REGISTER_FIELDS:
        wire = next((w for w in wire_names if w in message), None)
        if wire is None:
            if required:
                raise MessageError("register", wire_names[0], "is missing")
            out[name] = None
            continue
        try:
            out[name] = convert(message[wire])
        except _Bad as e:
            raise MessageError("register", wire, str(e)) from None
    for name in ("account_name", "computer_title"):
        if not out[name].strip():
            raise MessageError("register", name, "must not be blank")
    if out["tags"] is None:
        out["tags"] = []
    for name in ("container_info", "vm_info"):
        if out[name] is None:
            out[name] = ""
    for key, (convert, _required) in _COMMON_CLIENT.items():
        if key in message:
            try:
                out[key] = convert(message[key])
            except _Bad as e:
                raise MessageError("register", key, str(e)) from None
    return out


def validate_client_message(message: dict) -> dict:
    """Check and normalise one client → server message (what the server receives).

    - ``register``, either shape, becomes: ``type``, ``account_name``,
      ``computer_title``, ``hostname`` (required, str; account and title
      not blank); ``registration_password``,
      ``access_group``, ``machine_id``, ``clone_secure_id``, ``ubuntu_pro_info``,
      ``hostagent_uid``, ``installation_request_id``, ``authenticated_attach_code``
      (str or None); ``tags`` (list of str, parsed from landscape's
      ``"web, prod"``; ``[]`` when absent); ``container_info`` and ``vm_info``
      (str, ``""`` when absent; the broker's bytes ``vm-info`` is decoded);
      ``juju_info`` (dict or None); plus ``api`` (bytes) and ``timestamp`` when
      the message has them (the broker's shape).
    - ``operation-result``: ``operation-id`` (int), ``status`` (5 or 6),
      ``result-code`` (int or None), ``result-text`` (str or None), ``api``,
      ``timestamp`` (None when absent).
    - ``resynchronize``: ``operation-id`` (int or None: the client's own resync
      has none; its answer to the server's has one), ``api``, ``timestamp``.
    - any other type: a copy with ``type`` as str, unchecked (the server keeps
      or ignores it); an ``operation-id``, if present, must be an int.

    Operation ids are between 0 and :data:`MAX_OPERATION_ID` and result codes
    32-bit (what the databases hold). NUL characters in the str fields of
    ``register``, ``operation-result`` and ``resynchronize`` become U+FFFD.

    :raises MessageError: naming the message type and the first bad field.
    """
    mtype = _message_type(message)
    if mtype == "register":
        return _without_nul(_validate_register(message))
    schema = _CLIENT_SCHEMAS.get(mtype)
    if schema is None:
        return _unknown(mtype, message)
    return _without_nul(_apply(mtype, schema, message))


def validate_server_message(message: dict) -> dict:
    """Check and normalise one server → client message (what the agent receives).

    - ``set-id``: ``id`` (bytes; a str is encoded), ``insecure-id`` (int).
    - ``unknown-id``: ``clone-of`` (str or None).
    - ``registration``: ``info`` (str).
    - ``accepted-types``: ``types`` (list of str).
    - ``resynchronize``: ``operation-id`` (int), ``scopes`` (list of str or None).
    - ``set-intervals``: ``exchange``, ``urgent-exchange``, ``ping`` (int >= 1 or None).
    - ``execute-script``: ``operation-id`` (int), ``interpreter``, ``code``,
      ``username`` (str), ``time-limit`` (int >= 0 or None; the key is required),
      ``attachments`` (dict of file name to attachment id int or inline str;
      required, may be empty), ``env`` (dict str to str, or None).
    - ``cancel-activity``: ``target-operation-id`` (int); no ``operation-id``.
    - any other type: a copy with ``type`` as str; an ``operation-id``, if
      present, must be an int (the agent answers such a message "no handler").

    Operation ids (``target-operation-id`` too) are between 0 and
    :data:`MAX_OPERATION_ID`, what the agent's database holds.

    :raises MessageError: naming the message type and the first bad field.
    """
    mtype = _message_type(message)
    schema = _SERVER_SCHEMAS.get(mtype)
    if schema is None:
        return _unknown(mtype, message)
    return _apply(mtype, schema, message)


# --- builders: server → client --------------------------------------------------------


def _build_int(mtype: str, field: str, value: object) -> int:
    if type(value) is not int:
        raise MessageError(mtype, field, f"must be an int, not {_tname(value)}")
    return value


def _build_bytes(mtype: str, field: str, value: object) -> bytes:
    if type(value) is bytes:
        return value
    if type(value) is str:
        return value.encode("utf-8")
    raise MessageError(mtype, field, f"must be bytes, not {_tname(value)}")


def _build_text(mtype: str, field: str, value: object) -> str:
    if type(value) is not str:
        raise MessageError(mtype, field, f"must be a str, not {_tname(value)}")
    return value


def set_id(secure_id: bytes, insecure_id: int) -> dict:
    """The registration answer: the computer's secure id (sent as bytes) and insecure id."""
    return {
        "type": "set-id",
        "id": _build_bytes("set-id", "id", secure_id),
        "insecure-id": _build_int("set-id", "insecure-id", insecure_id),
    }


def unknown_id(clone_of: str | None = None) -> dict:
    """Tell a client its secure id is not known; ``clone_of`` names the original of a clone."""
    message: dict = {"type": "unknown-id"}
    if clone_of is not None:
        message["clone-of"] = _build_text("unknown-id", "clone-of", clone_of)
    return message


def registration(info: str) -> dict:
    """A registration refusal, e.g. ``"unknown-account"`` or ``"max-pending-computers"``."""
    return {"type": "registration", "info": _build_text("registration", "info", info)}


def accepted_types(types: Iterable[str]) -> dict:
    """The types the server accepts from this client, sorted, each a str."""
    listed = sorted({_build_text("accepted-types", "types", t) for t in types})
    return {"type": "accepted-types", "types": listed}


def resynchronize(operation_id: int, scopes: Iterable[str] | None = None) -> dict:
    """Ask the client to resend its full state (for ``scopes``, or all of it)."""
    message: dict = {"type": "resynchronize", "operation-id": _build_int("resynchronize", "operation-id", operation_id)}
    if scopes is not None:
        message["scopes"] = [_build_text("resynchronize", "scopes", s) for s in scopes]
    return message


def set_intervals(exchange: int | None = None, urgent_exchange: int | None = None, ping: int | None = None) -> dict:
    """Change the client's intervals, in seconds; each must be at least :data:`MIN_INTERVAL`.

    :raises MessageError: for a value below 10 s (landscape-client would crash).
    """
    message: dict = {"type": "set-intervals"}
    for field, value in (("exchange", exchange), ("urgent-exchange", urgent_exchange), ("ping", ping)):
        if value is None:
            continue
        _build_int("set-intervals", field, value)
        if value < MIN_INTERVAL:
            raise MessageError("set-intervals", field, f"must be at least {MIN_INTERVAL} seconds, not {value}")
        message[field] = value
    return message


def execute_script(
    operation_id: int,
    interpreter: str,
    code: str,
    username: str,
    time_limit: int | None,
    attachments: Mapping[str, int | str] | None = None,
    env: Mapping[str, str] | None = None,
) -> dict:
    """Run ``code`` with ``interpreter`` as ``username``.

    ``time_limit`` in seconds (``None``: no limit); ``attachments`` maps a file
    name to an attachment id the agent fetches; ``env`` is merged over the
    script's environment.
    """
    mtype = "execute-script"
    message: dict = {
        "type": mtype,
        "operation-id": _build_int(mtype, "operation-id", operation_id),
        "interpreter": _build_text(mtype, "interpreter", interpreter),
        "code": _build_text(mtype, "code", code),
        "username": _build_text(mtype, "username", username),
        "time-limit": None if time_limit is None else _build_int(mtype, "time-limit", time_limit),
        "attachments": dict(attachments or {}),
    }
    if env is not None:
        message["env"] = dict(env)
    # The schema checks the dicts' contents; a builder must never emit a message
    # its own validator refuses.
    validate_server_message(message)
    return message


def cancel_activity(target_operation_id: int) -> dict:
    """Ridgeline's extension: stop the operation ``target_operation_id`` if it runs.

    It has no operation id and no result of its own: the canceled operation's
    ``operation-result`` (code ``canceled``) answers it. Send it only to agents
    listing ``cancel-activity`` in ``client-accepted-types``.
    """
    return {
        "type": "cancel-activity",
        "target-operation-id": _build_int("cancel-activity", "target-operation-id", target_operation_id),
    }


# --- builders: client → server --------------------------------------------------------


def operation_result(
    operation_id: int, status: int, result_text: str | None = None, result_code: int | None = None
) -> dict:
    """The outcome of an operation; ``status`` is :data:`protocol.codes.FAILED` or ``SUCCEEDED``."""
    mtype = "operation-result"
    message: dict = {
        "type": mtype,
        "operation-id": _build_int(mtype, "operation-id", operation_id),
        "status": _build_int(mtype, "status", status),
    }
    if status not in codes.STATUS_NAMES:
        raise MessageError(mtype, "status", f"must be {codes.FAILED} or {codes.SUCCEEDED}, not {status}")
    if result_code is not None:
        message["result-code"] = _build_int(mtype, "result-code", result_code)
    if result_text is not None:
        message["result-text"] = _build_text(mtype, "result-text", result_text)
    return message


def register(
    account_name: str,
    computer_title: str,
    hostname: str,
    *,
    registration_password: str | None = None,
    tags: Iterable[str] | str | None = None,
    container_info: str = "",
    vm_info: bytes = b"",
    ubuntu_pro_info: str = "{}",
    access_group: str | None = None,
    clone_secure_id: str | None = None,
    api: bytes | None = None,
    timestamp: int | None = None,
) -> dict:
    """A ``register`` message in the broker's shape (hyphenated ``container-info``,
    bytes ``vm-info``, comma-separated ``tags``), as landscape's broker sends it.

    ``api`` and ``timestamp`` are normally added when the message is queued.
    Optional fields that are ``None`` are left out (``registration_password``
    and ``tags`` are sent as ``None``, as the broker does).
    """
    mtype = "register"
    if tags is not None and type(tags) is not str:
        tags = ", ".join(_build_text(mtype, "tags", t) for t in tags)
    message: dict = {
        "type": mtype,
        "account_name": _build_text(mtype, "account_name", account_name),
        "computer_title": _build_text(mtype, "computer_title", computer_title),
        "hostname": _build_text(mtype, "hostname", hostname),
        "registration_password": registration_password,
        "tags": tags or None,
        "container-info": _build_text(mtype, "container-info", container_info),
        "vm-info": _build_bytes(mtype, "vm-info", vm_info),
        "ubuntu_pro_info": _build_text(mtype, "ubuntu_pro_info", ubuntu_pro_info),
    }
    for field, value in (("access_group", access_group), ("clone_secure_id", clone_secure_id)):
        if value:
            message[field] = _build_text(mtype, field, value)
    if api is not None:
        message["api"] = _build_bytes(mtype, "api", api)
    if timestamp is not None:
        message["timestamp"] = _build_int(mtype, "timestamp", timestamp)
    validate_client_message(message)
    return message
