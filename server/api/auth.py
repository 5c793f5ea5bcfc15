"""``Authorization: Bearer <key>`` against the API keys (``ridgeline api-key create``)."""

from __future__ import annotations

from server.api.errors import ApiError
from server.activityservice import now_of


async def authenticate(context, request):
    """The ``ApiKey`` of the request, or :class:`ApiError` 401."""
    header = request.getHeader(b"authorization")
    scheme, _, key = (header or "").partition(" ") if isinstance(header, str) else \
        (header or b"").decode("latin-1").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(401, "unauthorized", "an API key is required: send 'Authorization: Bearer <key>'")
    api_key = await context.db.apikeys.authenticate(key.strip(), now_of(context))
    if api_key is None:
        raise ApiError(401, "unauthorized", "the API key is not valid (unknown or revoked)")
    return api_key
