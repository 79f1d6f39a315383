"""What the Lambda handlers share: the RunService, built once per warm container from the
environment, and the one way a handler runs a task.

A handler is an adapter: its event is parsed once into the run record, one task of the service
runs on it, and the record goes back as a dict. A failure propagates (Step Functions matches
the exception's class name in the definition's Retry and Catch) after it is logged with its
whole exception chain: the error Step Functions shows holds only the last exception's message.
"""

from __future__ import annotations

import logging
import os

from stepcluster import logs
from stepcluster.errors import InputError, InternalError

log = logs.logger(__name__)
_service = None
#: Python's own errors: no code here raises them on purpose, so one reaching a handler is a bug.
#: Step Functions sees InternalError (naming the original) instead of a bare ValueError.
UNEXPECTED = (ValueError, LookupError, TypeError, AttributeError, StopIteration)


def service():
    global _service
    if _service is None:
        from stepcluster.service import RunService
        from stepcluster.settings import Settings

        logging.getLogger("stepcluster").setLevel(os.environ.get("LOG_LEVEL", "INFO"))
        _service = RunService(Settings.from_env())
    return _service


def reset() -> None:
    """Forget the shared service (tests and run-local change the environment between runs)."""
    global _service
    _service = None


def run_task(task: str, event, run_service=None, *, context=None) -> dict:
    """Parse the run record in `event`, run `task` on it (on the shared service, or the one
    given), return the record as a dict. `context`: Lambda's, whose memory size the task's
    usage is counted at."""
    from stepcluster.record import Run

    run = None
    try:
        run = Run.from_dict(event)
        memory = getattr(context, "memory_limit_in_mb", None) or os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
        with logs.run_context(run.execution, run.cluster_name):
            return (run_service or service()).task(task, run, memory_mb=int(memory) if memory else None).to_dict()
    except Exception as exc:
        with logs.run_context(getattr(run, "execution", None), getattr(run, "cluster_name", None)):
            log.error("%s failed: %s: %s", task, type(exc).__name__, exc, exc_info=True)
        if isinstance(exc, UNEXPECTED):
            raise InternalError(f"{task} failed on an unexpected {type(exc).__name__}: {exc} (a bug: "
                                "the function's log has its traceback)", error=exc) from exc
        raise


def notify_task(execution_arn: str) -> dict:
    """The message about an ended execution (notify.py), to the deployment's topic."""
    import boto3

    from stepcluster.notify import Notifier
    from stepcluster.settings import Settings

    settings = Settings.from_env()
    if not settings.notify_topic_arn:
        raise InputError("STEPCLUSTER_NOTIFY_TOPIC_ARN is not set: there is no topic to tell")
    with logs.run_context(str(execution_arn).rsplit(":", 1)[-1]):
        region = execution_arn.split(":")[3]
        return Notifier(boto3.client("stepfunctions", region_name=region), boto3.client("s3"),
                        boto3.client("sns", region_name=settings.notify_topic_arn.split(":")[3]),
                        settings.artifacts_bucket, settings.notify_topic_arn).notify(execution_arn)


def cleanup_task(execution_arn: str, call) -> dict:
    """An execution's cleanup (the abort rule, the sweep), logged under that execution."""
    with logs.run_context(str(execution_arn).rsplit(":", 1)[-1]):
        try:
            return call()
        except Exception as exc:
            log.error("cleanup failed: %s: %s", type(exc).__name__, exc, exc_info=True)
            raise
