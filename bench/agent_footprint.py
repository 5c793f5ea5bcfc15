"""The agent's footprint while idle: resident memory and CPU share.

Starts a small message-system server in this process (the fake server of the
agent tests, on a loopback port, with the real reactor in a thread), runs
``ridgeline agent`` as a subprocess against it, lets it register, then measures
for ``--seconds`` (default 60): peak RSS (VmHWM and VmRSS from /proc) and CPU
share (utime+stime from /proc over wall time). Once at the default intervals,
once with every interval at 1 s, and once more at the default intervals over
https (the server with a throwaway CA, ``--ssl-public-key``): an agent whose
URLs are all http does not load the TLS stack (``agent.lazytls``), so both
figures are printed.

Goal: <= 64 MB RSS and < 0.5 % CPU at the default intervals.

    python bench/agent_footprint.py [--seconds 60] [--warmup 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "agent"))  # the fake server lives with the tests
sys.path.insert(0, str(ROOT / "tests"))  # tlscerts: a throwaway CA for the https run

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


def start_server(tls_dir: str):
    """The fake server on two loopback ports, http and https; the CA file."""
    from agent_fakeserver import FakeServer
    from tlscerts import make_server_tls
    from twisted.internet import endpoints, reactor
    from twisted.web.server import Site

    fake = FakeServer()
    site = Site(fake.resource())
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    tls = make_server_tls(Path(tls_dir))
    ports = []
    endpoints.serverFromString(reactor, tls.listen()).listen(site).addCallback(ports.append)
    thread = threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False}, daemon=True)
    thread.start()
    while not ports:
        time.sleep(0.01)
    return fake, port.getHost().port, ports[0].getHost().port, str(tls.ca), reactor


def measure(url: str, fake, seconds: float, warmup: float, intervals: int | None, ca: str | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable, "-m", "ridgeline", "agent",
            "--url", url, "--data-path", tmp, "--computer-title", "bench", "--log-level", "warn",
        ]
        if ca:
            cmd += ["--ssl-public-key", ca]
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
    tls_dir = tempfile.mkdtemp(prefix="ridgeline-footprint-")
    fake, port, tls_port, ca, reactor = start_server(tls_dir)
    http = f"http://127.0.0.1:{port}/message-system"
    https = f"https://127.0.0.1:{tls_port}/message-system"
    ok = True
    try:
        runs = (("default intervals (900/60/30 s)", http, None, None),
                ("all intervals 1 s", http, 1, None),
                ("https, default intervals", https, None, ca))
        for label, url, intervals, cafile in runs:
            r = measure(url, fake, args.seconds, args.warmup, intervals, cafile)
            print(
                f"{label:34s} RSS {r['rss_mb']:6.1f} MB (peak {r['hwm_mb']:.1f} MB)  CPU {r['cpu_pct']:6.3f} %"
                f"  over {r['wall']:.0f} s: {r['exchanges']} exchanges, {r['pings']} pings,"
                f" registered={r['registered']}"
            )
            met = r["hwm_mb"] <= 64 and r["cpu_pct"] < 0.5 and r["registered"]
            if intervals is None and cafile is None:
                ok = ok and met
            elif cafile is not None:
                print("https (TLS loaded):", "within the goal" if met else "over the goal")
        print("goal (<= 64 MB, < 0.5 % CPU at defaults, http):", "met" if ok else "NOT met")
    finally:
        reactor.callFromThread(reactor.stop)
        shutil.rmtree(tls_dir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
