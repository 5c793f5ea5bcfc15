"""Built-in job plugins (server activity types run by job-handlers).

- ``activity-report`` (:mod:`plugins.jobs.report`): CSV and JSON report of the
  activities matching filters, stored as the job's outputs.
- ``purge-activities`` (:mod:`plugins.jobs.purge`): deletes old final activities
  with their history and outputs, in batches.

``server.plugins`` registers :func:`builtin_job_plugins` explicitly; third-party
job plugins come from the entry-point group ``ridgeline.jobs``.
"""

from __future__ import annotations


def builtin_job_plugins() -> list:
    from plugins.jobs import purge, report

    return [report, purge]
