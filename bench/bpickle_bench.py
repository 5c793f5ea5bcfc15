"""Encode/decode throughput of protocol.bpickle on two realistic exchange payloads.

(a) a client exchange request carrying 100 ``operation-result`` messages with
    2 KiB of ``result-text`` each (what a busy agent sends);
(b) an idle exchange request with no messages (what every agent sends every
    exchange interval).

Prints MB/s and operations/s for each. The issue's target for decoding, pure
Python on this machine class: about 150 MB/s on (a) and 100,000 decodes/s on (b).

Usage: python bench/bpickle_bench.py [--seconds S]
"""

from __future__ import annotations

import argparse
import time

from protocol import bpickle, codes
from protocol.exchange import CLIENT_API, SERVER_API, ExchangeRequest, accepted_types_digest


def busy_payload() -> dict:
    text = ("line of script output, with some numbers 0123456789 and words\n" * 40)[:2048]
    messages = [
        {
            "type": "operation-result",
            "operation-id": 1_000_000 + i,
            "status": codes.SUCCEEDED,
            "result-code": 0,
            "result-text": text,
            "api": SERVER_API,
            "timestamp": 1_700_000_000 + i,
        }
        for i in range(100)
    ]
    return _request(messages, total=100)


def idle_payload() -> dict:
    return _request([], total=0)


def _request(messages: list[dict], total: int) -> dict:
    return ExchangeRequest(
        server_api=SERVER_API,
        client_api=CLIENT_API,
        sequence=4711,
        accepted_types_digest=accepted_types_digest(["accepted-types", "execute-script", "resynchronize"]),
        messages=messages,
        total_messages=total,
        next_expected_sequence=815,
        client_accepted_types=None,
    ).to_wire()


def measure(fn, arg, seconds: float) -> float:
    """Best-of-5 operations per second of ``fn(arg)``."""
    # Calibrate a batch size that takes about a fifth of the budget.
    count = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(count):
            fn(arg)
        elapsed = time.perf_counter() - t0
        if elapsed > seconds / 25:
            break
        count *= 2
    best = elapsed / count
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(count):
            fn(arg)
        best = min(best, (time.perf_counter() - t0) / count)
    return 1.0 / best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="rough time budget per figure")
    args = parser.parse_args()

    for name, payload in (
        ("(a) 100 operation-results, 2 KiB result-text each", busy_payload()),
        ("(b) idle exchange request, no messages", idle_payload()),
    ):
        data = bpickle.dumps(payload)
        assert bpickle.loads(data) == payload
        enc = measure(bpickle.dumps, payload, args.seconds)
        dec = measure(bpickle.loads, data, args.seconds)
        size = len(data)
        print(name)
        print(f"  payload size   {size:>12,d} bytes")
        print(f"  encode         {enc * size / 1e6:>12.1f} MB/s   {enc:>12,.0f} ops/s")
        print(f"  decode         {dec * size / 1e6:>12.1f} MB/s   {dec:>12,.0f} ops/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
