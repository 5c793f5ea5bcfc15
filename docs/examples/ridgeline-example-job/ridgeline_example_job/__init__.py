"""Ridgeline example job plugin: ``computers-by-tag``.

A server activity (a *job*): a job-handler runs :func:`run`, which pages through
the computers, counts them by tag, stores ``computers-by-tag.csv`` as the job's
output (``GET /api/v1/activities/{id}/output/computers-by-tag.csv``) and returns
a one-line summary as the activity's result text.
"""

from __future__ import annotations

import csv
import io
from collections import Counter, defaultdict

from server.hookspecs import ActivityType, JobContext, JobResult, hookimpl

NAME = "computers-by-tag"
OUTPUT = "computers-by-tag.csv"
UNTAGGED = "(untagged)"
PAGE = 500

PARAMETERS_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "status": {
            "type": "string",
            "enum": ["accepted", "pending"],
            "description": "Only computers in this status (default: both).",
        },
    },
}


def to_csv(counts: Counter, ids: dict[str, list[int]]) -> bytes:
    """One row per tag, most computers first: ``tag,computers,computer_ids``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["tag", "computers", "computer_ids"])
    for tag, n in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        writer.writerow([tag, n, " ".join(map(str, ids[tag]))])
    return buf.getvalue().encode("utf-8")


async def run(job: JobContext) -> JobResult:
    status = job.activity.parameters.get("status")
    counts: Counter = Counter()
    ids: dict[str, list[int]] = defaultdict(list)
    seen = 0
    while True:
        # A cancel is honoured between pages; the job-handler abandons a job
        # that ignores it after the grace period.
        if job.canceled:
            return JobResult(f"Canceled after {seen} computers.", failed=True)
        total, page = await job.list_computers(status=status, limit=PAGE, offset=seen)
        for computer in page:
            for tag in computer.tags or (UNTAGGED,):
                counts[tag] += 1
                ids[tag].append(computer.id)
        seen += len(page)
        if total:
            await job.report_progress(min(99, 100 * seen // total))
        if len(page) < PAGE:
            break
    await job.store_output(OUTPUT, to_csv(counts, ids), "text/csv; charset=utf-8")
    top = ", ".join(f"{tag} {n}" for tag, n in sorted(counts.items(), key=lambda i: (-i[1], i[0]))[:5])
    return JobResult(f"{seen} computers, {len(counts)} tags: {top or 'none'}. Output {OUTPUT}.")


COMPUTERS_BY_TAG = ActivityType(
    name=NAME,
    kind="server",
    description="Count computers by tag; stores computers-by-tag.csv.",
    parameters_schema=PARAMETERS_SCHEMA,
    run=run,
    time_limit=600,
    # It only reads: running it again after a job-handler died is harmless.
    retry_safe=True,
)


@hookimpl
def ridgeline_activity_types():
    return [COMPUTERS_BY_TAG]
