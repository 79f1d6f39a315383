"""The Lambda handlers as adapters: one parse, one task, a dict out; bad events are clear
errors; every log line names its run, and a failure's whole exception chain is logged."""

import logging
import traceback

import pytest

from handlers import cluster, poll_jobs
from stepcluster import logs, runtime
from stepcluster.errors import ClusterError, InputError
from stepcluster.record import Phase, Run


class Service:
    """Records the task it is asked for; fails when told to."""

    def __init__(self, fail=None):
        self.calls, self.fail = [], fail

    def task(self, name, run, *, memory_mb=None):
        self.calls.append((name, run))
        self.memory_mb = memory_mb
        logs.logger("stepcluster.test").info("working on %s", name)
        if self.fail:
            try:
                raise KeyError("stack_id")
            except KeyError as exc:
                raise self.fail from exc
        run = run.copy()
        run.phase = Phase.RUNNING
        return run


RECORD = {"execution": "exec-1", "cluster_name": "c1", "order": "parallel",
          "cluster": {"status": "READY"}, "jobs": {"a": {"state": "PENDING", "job_id": "1"}}}


@pytest.fixture
def service(monkeypatch):
    made = Service()
    monkeypatch.setattr(runtime, "_service", made)
    return made


def test_a_handler_parses_once_runs_one_task_and_returns_json(service, caplog):
    caplog.set_level(logging.INFO, logger="stepcluster")
    out = poll_jobs.handler(RECORD, None)
    assert out == {**RECORD, "keep_cluster": False, "next": 0, "phase": "RUNNING"}
    [(name, run)] = service.calls
    assert name == "poll_jobs" and isinstance(run, Run)
    assert "[exec-1 cluster=c1] working on poll_jobs" in caplog.messages


def test_a_task_is_counted_at_the_functions_memory(service, monkeypatch):
    """Lambda's context (or its environment) says the function's memory: the task's usage is
    counted at it (usage.py)."""
    poll_jobs.handler(RECORD, type("Context", (), {"memory_limit_in_mb": 512})())
    assert service.memory_mb == 512
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1769")
    poll_jobs.handler(RECORD, None)
    assert service.memory_mb == 1769
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
    cluster.handler({"action": "status", "run": RECORD}, None)
    assert service.memory_mb is None


def test_the_cluster_handler_maps_the_definitions_actions(service):
    for action, task in cluster.ACTIONS.items():
        cluster.handler({"action": action, "run": RECORD}, None)
        assert service.calls[-1][0] == task
    assert [c[0] for c in service.calls] == ["create_cluster", "cluster_status", "delete_cluster", "deletion_status"]


@pytest.mark.parametrize("event, words", [
    ({"action": "explode", "run": RECORD}, "unknown action 'explode'"),
    ({"run": RECORD}, "unknown action None"),
    (["create"], "takes an object, not list"),
    ({"action": "create", "run": "x"}, "not a run record"),
])
def test_a_bad_event_is_an_input_error_not_a_traceback(service, event, words):
    with pytest.raises(InputError) as err:
        cluster.handler(event, None)
    assert words in str(err.value)


def test_a_failure_propagates_after_its_chain_is_logged_under_the_run(monkeypatch, caplog):
    monkeypatch.setattr(runtime, "_service", Service(fail=ClusterError("could not delete")))
    with pytest.raises(ClusterError):
        poll_jobs.handler(RECORD, None)
    [failed] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert failed.getMessage() == "[exec-1 cluster=c1] poll_jobs failed: ClusterError: could not delete"
    logged = "".join(traceback.format_exception(*failed.exc_info))
    assert "KeyError: 'stack_id'" in logged and "direct cause" in logged


def test_outside_a_run_lines_have_no_prefix_and_contexts_nest(caplog):
    caplog.set_level(logging.INFO, logger="stepcluster")
    log = logs.logger("stepcluster.test")
    log.info("plain")
    with logs.run_context("e1", "c1"):
        with logs.run_context("e2"):
            log.info("inner")
        log.info("outer")
    assert caplog.messages == ["plain", "[e2] inner", "[e1 cluster=c1] outer"]


def test_a_python_error_reaches_step_functions_as_an_internal_error_naming_it(monkeypatch, caplog):
    from stepcluster.errors import InternalError

    monkeypatch.setattr(runtime, "_service", Service(fail=ValueError("bad literal")))
    with pytest.raises(InternalError) as err:
        poll_jobs.handler(RECORD, None)
    assert str(err.value) == ("poll_jobs failed on an unexpected ValueError: bad literal (a bug: the "
                              "function's log has its traceback)")
    assert isinstance(err.value.error, ValueError) and err.value.__cause__ is err.value.error
    assert "ValueError: bad literal" in caplog.text
