"""The agent's footprint while idle: resident memory and CPU share.

Starts a small message-system server in this process (the fake server of the
agent tests, on a loopback port, with the real reactor in a thread), runs
``ridgeline agent`` as a subprocess against it, lets it register, then measures
for ``--seconds`` (default 60): peak RSS (VmHWM and VmRSS from /proc) and CPU
share (utime+stime from /proc over wall time). Once at the default intervals,
once with every interval at 1 s.

Goal: <= 64 MB RSS and < 0.5 % CPU at the default intervals.

    python bench/agent_footprint.py [--seconds 60] [--warmup 5]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "agent"))  # the fake server lives with the tests

HZ = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid: int) -> int:
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def start_server():
    from agent_fakeserver import FakeServer
    from twisted.internet import reactor
    from twisted.web.server import Site

    fake = FakeServer()
    port = reactor.listenTCP(0, Site(fake.resource()), interface="127.0.0.1")
    thread = threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False}, daemon=True)
    thread.start()
    return fake, port.getHost().port, reactor


def measure(port: int, fake, seconds: float, warmup: float, intervals: int | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable, "-m", "ridgeline", "agent",
            "--url", f"http://127.0.0.1:{port}/message-system",
            "--data-path", tmp, "--computer-title", "bench", "--log-level", "warn",
        ]
        if intervals is not None:
            for flag in ("--exchange-interval", "--urgent-exchange-interval", "--ping-interval"):
                cmd += [flag, str(intervals)]
        before = len(fake.requests)
        proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(warmup)
            if proc.poll() is not None:
                raise SystemExit(f"the agent exited early: {proc.stderr.read()}")
            t0, c0, pings0, req0 = time.monotonic(), cpu_ticks(proc.pid), len(fake.pings), len(fake.requests)
            peak_rss = 0
            while time.monotonic() - t0 < seconds:
                time.sleep(min(1.0, seconds))
                peak_rss = max(peak_rss, status_kb(proc.pid, "VmRSS"))
            wall = time.monotonic() - t0
            used = (cpu_ticks(proc.pid) - c0) / HZ
            hwm = status_kb(proc.pid, "VmHWM")
            registered = any(c.title == "bench" for c in fake.computers.values())
            return {
                "rss_mb": peak_rss / 1024,
                "hwm_mb": hwm / 1024,
                "cpu_pct": 100.0 * used / wall,
                "wall": wall,
                "exchanges": len(fake.requests) - req0,
                "pings": len(fake.pings) - pings0,
                "total_exchanges": len(fake.requests) - before,
                "registered": registered,
            }
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="measurement window per run (default 60)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds to let the agent start and register")
    args = parser.parse_args()
    fake, port, reactor = start_server()
    ok = True
    try:
        for label, intervals in (("default intervals (900/60/30 s)", None), ("all intervals 1 s", 1)):
            r = measure(port, fake, args.seconds, args.warmup, intervals)
            print(
                f"{label:34s} RSS {r['rss_mb']:6.1f} MB (peak {r['hwm_mb']:.1f} MB)  CPU {r['cpu_pct']:6.3f} %"
                f"  over {r['wall']:.0f} s: {r['exchanges']} exchanges, {r['pings']} pings,"
                f" registered={r['registered']}"
            )
            if intervals is None:
                ok = ok and r["hwm_mb"] <= 64 and r["cpu_pct"] < 0.5 and r["registered"]
        print("goal (<= 64 MB, < 0.5 % CPU at defaults):", "met" if ok else "NOT met")
    finally:
        reactor.callFromThread(reactor.stop)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
