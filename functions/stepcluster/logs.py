"""Log lines that say which run they are about.

Each handler sets the execution and cluster of the record it was given for the length of its
call (`with run_context(...)`), and every line this package logs carries them in front:

    [exec-1 cluster=demo] job a submitted as 12

so the log of a function that serves many executions can be read one run at a time (CloudWatch
Logs Insights: `filter @message like "[exec-1 "`). A context variable, not a global: run-local
serves the functions from threads.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging

_current: contextvars.ContextVar[str] = contextvars.ContextVar("stepcluster_run", default="")


class _RunPrefix(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        prefix = _current.get()
        if prefix and not getattr(record, "stepcluster_run", None):
            record.stepcluster_run = prefix
            record.msg = f"{prefix} {record.msg}"
        return True


_PREFIX = _RunPrefix()


def logger(name: str) -> logging.Logger:
    """The package's logger for a module: its lines carry the run they are about."""
    log = logging.getLogger(name if name.startswith("stepcluster") else f"stepcluster.{name}")
    if _PREFIX not in log.filters:
        log.addFilter(_PREFIX)
    return log


@contextlib.contextmanager
def run_context(execution: str | None, cluster_name: str | None = None):
    """Prefix this package's log lines with the execution and cluster until the block ends."""
    parts = [execution or "?"] + ([f"cluster={cluster_name}"] if cluster_name else [])
    token = _current.set(f"[{' '.join(parts)}]")
    try:
        yield
    finally:
        _current.reset(token)
