"""Operation status and result codes, defined once for both sides.

An ``operation-result`` message carries a ``status`` (``FAILED`` or ``SUCCEEDED``)
and, optionally, a ``result-code`` integer saying why. Landscape's script plugin
uses 102–104; Ridgeline's own codes start at 200. The REST API shows the integer as
``result_code`` and its name (``result_name``) from :data:`RESULT_NAMES`.

The values are plain ``int`` (not ``IntEnum``): bpickle encodes by exact type and
refuses ``int`` subclasses.
"""

from __future__ import annotations

#: ``operation-result`` ``status``: the operation failed.
FAILED = 5
#: ``operation-result`` ``status``: the operation succeeded.
SUCCEEDED = 6

STATUS_NAMES: dict[int, str] = {FAILED: "failed", SUCCEEDED: "succeeded"}

# --- Landscape's script result codes ------------------------------------------------
#: The script ran past its time limit and was killed.
TIME_LIMIT = 102
#: The script exited with a non-zero status or was killed by a signal.
SCRIPT_FAILED = 103
#: An attachment could not be fetched from the server.
ATTACHMENT_DOWNLOAD_FAILED = 104

# --- Ridgeline's own ------------------------------------------------------------------
#: The agent (or job-handler) stopped while the work was running; it did not finish.
INTERRUPTED = 200
#: The work was stopped because an administrator canceled the activity.
CANCELED = 201
#: The activity was not delivered before its ``deliver_before`` time.
EXPIRED = 202
#: No enabled plugin on the agent handles the message type.
NO_HANDLER = 203
#: The agent's configuration does not allow scripts to run as that user.
USER_NOT_ALLOWED = 204
#: The user does not exist on the computer.
UNKNOWN_USER = 205
#: The script's interpreter does not exist on the computer.
UNKNOWN_INTERPRETER = 206
#: The agent never answered within the activity type's deadline.
NO_ANSWER = 207

#: Name of each result code, as the API shows it in ``result_name``.
RESULT_NAMES: dict[int, str] = {
    TIME_LIMIT: "time-limit",
    SCRIPT_FAILED: "script-failed",
    ATTACHMENT_DOWNLOAD_FAILED: "attachment-download-failed",
    INTERRUPTED: "interrupted",
    CANCELED: "canceled",
    EXPIRED: "expired",
    NO_HANDLER: "no-handler",
    USER_NOT_ALLOWED: "user-not-allowed",
    UNKNOWN_USER: "unknown-user",
    UNKNOWN_INTERPRETER: "unknown-interpreter",
    NO_ANSWER: "no-answer",
}

#: Code of each name: the inverse of :data:`RESULT_NAMES`.
RESULT_CODES: dict[str, int] = {name: code for code, name in RESULT_NAMES.items()}


def result_name(code: int | None) -> str | None:
    """The name of a result code; ``None`` for no code, ``"code-N"`` for one not known."""
    if code is None:
        return None
    return RESULT_NAMES.get(code, f"code-{code}")
