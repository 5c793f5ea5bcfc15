"""``ridgeline demo`` (interim): encode and decode real exchange payloads with protocol/.

The full demo -- a server and an agent running locally, activities end to end --
is not built yet. Until it is, this shows the smallest real thing that exists:
the wire bytes of an idle exchange request and of an exchange carrying an
``operation-result``, made and decoded by ``protocol``, and a server reply.
"""

from __future__ import annotations

import argparse
import sys

from protocol import bpickle, codes, messages
from protocol.exchange import (
    CLIENT_API,
    SERVER_API,
    ExchangeRequest,
    ExchangeResponse,
    accepted_types_digest,
    receive_client_messages,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hex", action="store_true", help="also print the payloads as hex")


def _show(title: str, payload: dict, out, show_hex: bool) -> dict:
    data = bpickle.dumps(payload)
    decoded = bpickle.loads(data)
    print(f"== {title}: {len(data)} bytes of bpickle", file=out)
    print(f"   wire : {data!r}", file=out)
    if show_hex:
        print(f"   hex  : {data.hex()}", file=out)
    print(f"   back : {decoded!r}", file=out)
    print(f"   round trip identical: {decoded == payload}", file=out)
    return decoded


def run(args: argparse.Namespace, out=None) -> int:
    out = out or sys.stdout
    print("NOTE: the full demo (server + agent) is not built yet; this only shows the", file=out)
    print("      message-system wire format that both will speak, using protocol/.\n", file=out)
    digest = accepted_types_digest(["accepted-types", "execute-script", "resynchronize", "set-id"])

    idle = ExchangeRequest(
        server_api=SERVER_API,
        client_api=CLIENT_API,
        sequence=3,
        accepted_types_digest=digest,
        messages=[],
        total_messages=0,
        next_expected_sequence=2,
    )
    _show("idle exchange request (agent -> server)", idle.to_wire(), out, args.hex)

    result = messages.operation_result(
        17, codes.SUCCEEDED, result_text="hello from the script\n"
    ) | {"api": SERVER_API, "timestamp": 1_700_000_000}
    busy = ExchangeRequest(
        server_api=SERVER_API,
        client_api=CLIENT_API,
        sequence=3,
        accepted_types_digest=digest,
        messages=[result],
        total_messages=1,
        next_expected_sequence=2,
    )
    decoded = _show("exchange request with an operation-result", busy.to_wire(), out, args.hex)
    request = ExchangeRequest.from_wire(decoded)
    plan = receive_client_messages(expected=3, sequence=request.sequence or 0, count=len(request.messages))
    for message in request.messages[plan.skip : plan.skip + plan.process]:
        checked = messages.validate_client_message(message)
        print(
            f"   server sees operation {checked['operation-id']}: "
            f"{codes.STATUS_NAMES[checked['status']]}, text {checked['result-text']!r}",
            file=out,
        )

    reply = ExchangeResponse(
        server_api=SERVER_API,
        server_uuid=b"demo-server-uuid",
        messages=[messages.execute_script(18, "/bin/sh", "uptime", "nobody", 60, {}, None)],
        next_expected_sequence=plan.next_expected,
        next_exchange_token=b"demo-token",
    )
    _show("server reply", reply.to_wire(), out, args.hex)
    return 0
