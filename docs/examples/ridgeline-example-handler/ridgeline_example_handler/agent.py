"""Agent half: the handler of ``uptime-report`` messages.

The agent core records the operation durably, then calls
:meth:`UptimeReportHandler.ridgeline_agent_handle`; what the returned coroutine
gives back becomes the ``operation-result`` message the server stores as the
activity's result.
"""

from __future__ import annotations

import os
from pathlib import Path

from agent.hookspecs import OperationContext, OperationResult, hookimpl
from protocol import codes

from ridgeline_example_handler import MESSAGE_TYPE


def format_duration(seconds: float) -> str:
    """``3d 4h 5m`` style: days and hours only when there are any."""
    minutes = int(seconds) // 60
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    parts = [f"{days}d"] if days else []
    if days or hours:
        parts.append(f"{hours}h")
    parts.append(f"{minutes}m")
    return " ".join(parts)


def disk_usage_line(path: str) -> str:
    """``/: 41% used, 58.2 GiB free of 98.3 GiB``, or why it cannot be read."""
    try:
        st = os.statvfs(path)
    except OSError as e:
        return f"{path}: cannot read ({e.strerror})"
    total = st.f_blocks * st.f_frsize
    free = st.f_bavail * st.f_frsize
    used = total - st.f_bfree * st.f_frsize
    percent = round(100 * used / (used + free)) if used + free else 0
    gib = 1024**3
    return f"{path}: {percent}% used, {free / gib:.1f} GiB free of {total / gib:.1f} GiB"


class UptimeReportHandler:
    """Answers ``uptime-report``. ``proc`` is where /proc is (a test may point it elsewhere)."""

    def __init__(self, proc: str = "/proc") -> None:
        self.proc = Path(proc)

    def report(self, paths: list[str]) -> str:
        uptime = float((self.proc / "uptime").read_text().split()[0])
        load = (self.proc / "loadavg").read_text().split()[:3]
        lines = [f"up {format_duration(uptime)} ({uptime:.0f} s)", "load average: " + " ".join(load)]
        lines.extend(disk_usage_line(p) for p in paths)
        return "\n".join(lines)

    @hookimpl
    def ridgeline_agent_message_types(self):
        return [MESSAGE_TYPE]

    @hookimpl
    def ridgeline_agent_handle(self, message: dict, context: OperationContext):
        if message["type"] != MESSAGE_TYPE:
            return None  # another plugin's message
        paths = [p.decode() if isinstance(p, bytes) else str(p) for p in message.get("paths") or ["/"]]

        async def run() -> OperationResult:
            context.log.info("uptime-report for operation {op}", op=context.operation_id)
            try:
                text = self.report(paths)
            except OSError as e:
                return OperationResult(codes.FAILED, f"cannot read {e.filename}: {e.strerror}")
            return OperationResult(codes.SUCCEEDED, text)

        return run()
