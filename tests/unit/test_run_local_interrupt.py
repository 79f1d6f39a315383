"""run-local's Ctrl-C, without the local cluster: the SIGINT handler while the execution runs
(asks, never interrupts a call into moto; restored afterwards), what the first Ctrl-C does
(stop, then the cluster function with the rule's event, then say what it did), the second
(say what may be left and the command that finishes it), and the CLI's exit codes. The same
with the real run-local, Slurm and SSH: tests/e2e/test_interrupt.py."""

import json
import signal
import threading

import boto3
import pytest
from moto import mock_aws

from stepcluster import cli
from stepcluster.local import runner

NAME = "local-20261202-080000-1a2b3c"
ARN = f"arn:aws:states:us-east-1:123456789012:execution:stepcluster-local:{NAME}"


@pytest.fixture
def python_handler():
    """Python's own SIGINT handler in place (as in a terminal), put back as it was."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def test_ctrl_c_while_the_execution_runs_only_asks_and_the_handler_is_restored(python_handler):
    with runner._ctrl_c_requests() as asked:
        try:
            signal.raise_signal(signal.SIGINT)          # no KeyboardInterrupt in the middle of a call
        except KeyboardInterrupt:
            pytest.fail("Ctrl-C interrupted the running code instead of asking the loop to stop")
        assert asked.is_set()
        with pytest.raises(KeyboardInterrupt):          # a second one before the loop acted: at once
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)


def test_an_ignored_sigint_stays_ignored_and_other_threads_set_no_handler(python_handler):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with runner._ctrl_c_requests() as asked:
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        signal.raise_signal(signal.SIGINT)
        assert not asked.is_set()
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN

    signal.signal(signal.SIGINT, signal.default_int_handler)
    seen = []

    def elsewhere():
        with runner._ctrl_c_requests():
            seen.append(signal.getsignal(signal.SIGINT))
    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join()
    assert seen == [signal.default_int_handler]


class Sfn:
    """Step Functions as the interpreter answers: RUNNING until the call in flight returns."""

    def __init__(self):
        self.stopped, self.described = [], 0

    def stop_execution(self, **kwargs):
        self.stopped.append(kwargs)

    def describe_execution(self, executionArn):
        self.described += 1
        return {"status": "RUNNING" if self.described < 3 else "ABORTED", "input": '{"cluster_name": "c"}'}


class Follower:
    def __init__(self):
        self.lines = []

    def say(self, text):
        self.lines.append(text)

    def update(self):
        pass


class Endpoint:
    """The cluster function: writes the manifest a real cleanup writes; or is interrupted."""

    def __init__(self, interrupt=False, in_flight=()):
        self.calls, self.interrupt, self.in_flight = [], interrupt, set(in_flight)

    def calls_in_flight(self):
        return self.in_flight

    def invoke(self, name, event):
        self.calls.append((name, event))
        if self.interrupt:
            raise KeyboardInterrupt
        manifest = {"execution": NAME, "jobs": {
            "long": {"state": "CANCELLED", "job_id": "7", "results": f"s3://b/{NAME}/long/"},
            "quick": {"state": "SUCCEEDED", "job_id": "8", "exit_code": 0, "results": f"s3://b/{NAME}/quick/"}}}
        boto3.client("s3").put_object(Bucket=runner.ARTIFACTS_BUCKET, Key=f"{NAME}/manifest.json",
                                      Body=json.dumps(manifest).encode())
        return {"execution": ARN, "clusters": [],
                "released": {"run_dir": f"/home/hpc/stepcluster-runs/{NAME}", "removed": True}}


@pytest.fixture
def local_functions(monkeypatch):
    """What local_environment sets, for Settings.from_env; moto's S3 with the artifacts bucket."""
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "STEPCLUSTER_BACKEND": "existing",
                       "STEPCLUSTER_SCHEDULER": "sge", "STEPCLUSTER_HEAD_NODE_HOST": "127.0.0.1",
                       "STEPCLUSTER_HEAD_NODE_PORT": "2222", "STEPCLUSTER_HEAD_NODE_USER": "hpc",
                       "STEPCLUSTER_HEAD_NODE_HOST_KEY": "ssh-ed25519 AAAA", "STEPCLUSTER_SSH_KEY_SECRET_ID": "s"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("STEPCLUSTER_REMOTE_ROOT", raising=False)
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket=runner.ARTIFACTS_BUCKET)
        yield


def test_a_polling_round_waiting_on_the_head_node_is_not_waited_for_the_cleanup_ends_it(local_functions):
    sfn, follower, progress = Sfn(), Follower(), []
    endpoint = Endpoint(in_flight={"PollJobsFunction"})
    invoke, seen_running = endpoint.invoke, []
    endpoint.invoke = lambda name, event: seen_running.append(sfn.described) or invoke(name, event)
    described, result = runner._interrupted(sfn, ARN, follower, endpoint, progress.append)
    assert seen_running == [1]            # cleaned up while the execution still ran
    [(name, event)] = endpoint.calls
    assert name == "ClusterFunction" and event["detail"]["status"] == "ABORTED"
    assert sfn.described >= 3 and described["status"] == "ABORTED"   # the cleanup first, then its end


def test_the_first_ctrl_c_stops_the_execution_then_plays_the_rules_event_and_says_what_it_did(local_functions):
    sfn, follower, endpoint, progress = Sfn(), Follower(), Endpoint(), []
    described, result = runner._interrupted(sfn, ARN, follower, endpoint, progress.append)

    assert sfn.stopped == [{"executionArn": ARN, "error": "Interrupted", "cause": "run-local was interrupted (Ctrl-C)"}]
    assert sfn.described >= 3 and described["status"] == "ABORTED"   # waited for the interpreter
    [(name, event)] = endpoint.calls
    assert name == "ClusterFunction"
    assert event["detail-type"] == "Step Functions Execution Status Change" and event["source"] == "aws.states"
    assert event["detail"]["executionArn"] == ARN and event["detail"]["status"] == "ABORTED"
    assert result["released"]["run_dir"] == f"/home/hpc/stepcluster-runs/{NAME}"
    said = "\n".join(follower.lines)
    assert "cancelled: long (job 7)" in said
    assert f"results kept: long, quick in s3://{runner.ARTIFACTS_BUCKET}/{NAME}/" in said
    assert f"removed /home/hpc/stepcluster-runs/{NAME} on the head node" in said
    rows = runner._as_kept([{"name": "long", "job_id": "7", "state": "RUNNING", "exit_code": None,
                             "started": None, "ended": None, "results": None}], NAME)
    assert rows[0]["state"] == "CANCELLED" and rows[0]["results"] == f"s3://b/{NAME}/long/"


def test_a_second_ctrl_c_during_the_cleanup_exits_saying_what_may_be_left(local_functions):
    progress = []
    with pytest.raises(KeyboardInterrupt) as raised:               # the CLI's 130
        runner._interrupted(Sfn(), ARN, Follower(), Endpoint(interrupt=True), progress.append)
    assert isinstance(raised.value, runner.Interrupted), "a bare KeyboardInterrupt: nothing said"
    said = "\n".join(progress)
    assert "Ctrl-C again: exiting now, the cleanup did not finish." in said
    assert f"its folder ~/stepcluster-runs/{NAME} on hpc@127.0.0.1:2222" in said
    assert f"finish the cleanup with: stepcluster cleanup {NAME} --scheduler sge" in said
    assert raised.value.left[-1] == f"finish the cleanup with: stepcluster cleanup {NAME} --scheduler sge"


class LibraryError(Exception):
    """What botocore's CRT signer raises when a KeyboardInterrupt reaches it (awscrt's
    AWS_ERROR_UNKNOWN): the Ctrl-C is caught inside the library, its own error comes out."""


def ctrl_c_inside_a_library():
    try:
        signal.raise_signal(signal.SIGINT)
    except KeyboardInterrupt:
        raise LibraryError("AWS_ERROR_UNKNOWN: Unknown error.") from None


def test_a_second_ctrl_c_that_a_library_turned_into_its_own_error_still_exits_saying_what_is_left(
        local_functions, python_handler):
    class Described(Sfn):     # moto's calls run in the main thread, where the Ctrl-C lands
        def describe_execution(self, executionArn):
            ctrl_c_inside_a_library()

    progress = []
    with pytest.raises(runner.Interrupted):                        # the CLI's 130, not a traceback
        runner._interrupted(Described(), ARN, Follower(), Endpoint(), progress.append)
    assert f"finish the cleanup with: stepcluster cleanup {NAME} --scheduler sge" in "\n".join(progress)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    # the same error with no Ctrl-C is not an interruption
    class Broken(Sfn):
        def describe_execution(self, executionArn):
            raise LibraryError("AWS_ERROR_UNKNOWN: Unknown error.")
    with pytest.raises(LibraryError):
        runner._interrupted(Broken(), ARN, Follower(), Endpoint(), progress.append)


def test_a_cleanup_that_fails_is_said_with_the_command_and_the_run_still_reports(local_functions):
    class Failing(Endpoint):
        def invoke(self, name, event):
            raise RuntimeError("head node unreachable")
    follower = Follower()
    described, result = runner._interrupted(Sfn(), ARN, follower, Failing(), lambda line: None)
    assert described["status"] == "ABORTED" and result is None
    said = "\n".join(follower.lines)
    assert "the cleanup failed: RuntimeError: head node unreachable" in said
    assert f"stepcluster cleanup {NAME} --scheduler sge" in said


@pytest.mark.parametrize("outcome, code", [("report", 130), ("again", 130)])
def test_the_cli_exits_130_after_an_interrupted_run(outcome, code, monkeypatch, tmp_path, capsys):
    def run_local(*args, **kwargs):
        if outcome == "again":
            raise runner.Interrupted(NAME, ["finish the cleanup with: stepcluster cleanup " + NAME])
        return runner.RunReport("ABORTED", "run-local was interrupted (Ctrl-C)", "Interrupted", [],
                                {"history_events": 1}, ARN, interrupted=True,
                                cleanup={"released": {"run_dir": "/x", "removed": True}})
    monkeypatch.setattr(runner, "run_local", run_local)
    config = tmp_path / "jobs.ini"
    config.write_text("[order]\nsequential = a\n[job a]\nhandler = a.sh\ns3_uri = s3://b/a.sh\n")
    assert cli.main(["run-local", str(config), "--cluster-name", "c"]) == code
    if outcome == "report":
        assert "ABORTED: Interrupted: run-local was interrupted (Ctrl-C)" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# run_local itself, in moto's interpreter with the real definition: the head-node functions are
# stand-ins (no local cluster here), the SIGINT a real one.

def _module(name: str, handler):
    import types

    module = types.ModuleType(name)
    module.handler = handler
    return module


@pytest.fixture
def stand_ins(tmp_path, monkeypatch):
    """run_local's arguments, with Prepare Head Node in flight for a second (the Ctrl-C comes
    then) and a cluster function that creates for real and records the cleanup it is asked."""
    import sys
    import time

    from handlers import cluster as real_cluster

    rig = tmp_path / "rig"
    (rig / "ssh").mkdir(parents=True)
    (rig / "ssh" / "client_ed25519").write_text("not a key: never used\n")
    (rig / "ssh" / "host_ed25519.pub").write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE0Y1b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b\n")
    jobs = tmp_path / "job"
    jobs.mkdir()
    (jobs / "run.sh").write_text("sleep 300\n")
    config = tmp_path / "jobs.ini"
    config.write_text("[order]\nparallel = long\n[job long]\nhandler = run.sh\nlocal_path = job\n")
    seen = {"in_flight": threading.Event(), "cleanup_started": threading.Event(), "cleanups": [],
            "cleanup_seconds": 0}

    def prepare(event, context):
        seen["in_flight"].set()
        time.sleep(1)
        return event

    def cluster(event, context):
        if event.get("detail-type") != "Step Functions Execution Status Change":
            return real_cluster.handler(event, context)
        seen["cleanups"].append(event)
        seen["cleanup_started"].set()
        time.sleep(seen["cleanup_seconds"])
        return {"execution": event["detail"]["executionArn"], "clusters": [],
                "released": {"run_dir": "/home/hpc/x", "removed": True}}

    monkeypatch.setitem(sys.modules, "stand_in_prepare", _module("stand_in_prepare", prepare))
    monkeypatch.setitem(sys.modules, "stand_in_cluster", _module("stand_in_cluster", cluster))

    def on_start(endpoint):
        endpoint.functions.update(PrepareHeadNodeFunction="stand_in_prepare", ClusterFunction="stand_in_cluster")

    seen["kwargs"] = {"cluster": runner.LocalCluster(rig=rig), "on_start": on_start, "timeout": 60}
    seen["config"] = str(config)
    return seen


def _ctrl_c_when(event: threading.Event, then: threading.Event | None = None):
    """SIGINT to this process when `event` is set; again when `then` is, delivered to this
    helper thread, not the main one, as the kernel may deliver a Ctrl-C (then Python runs its
    handler only when the main thread next runs Python code)."""
    import os

    def press():
        if event.wait(30):
            os.kill(os.getpid(), signal.SIGINT)
        if then is not None and then.wait(30):
            signal.pthread_kill(threading.get_ident(), signal.SIGINT)
    thread = threading.Thread(target=press, daemon=True)
    thread.start()
    return thread


def test_run_local_stops_on_ctrl_c_and_runs_the_cleanup_with_the_rules_event(stand_ins, python_handler):
    lines = []
    _ctrl_c_when(stand_ins["in_flight"])
    report = runner.run_local(stand_ins["config"], "demo", progress=lines.append, **stand_ins["kwargs"])

    assert (report.status, report.interrupted, report.error) == ("ABORTED", True, "Interrupted")
    [event] = stand_ins["cleanups"]
    assert event["detail"]["executionArn"] == report.execution_arn and event["detail"]["status"] == "ABORTED"
    assert report.cleanup["released"]["run_dir"] == "/home/hpc/x"
    assert report.invocations["ClusterFunction"] == 2                 # create, then the cleanup
    assert "SubmitJobsFunction" not in report.invocations             # stopped before it
    said = "\n".join(lines)
    assert "Ctrl-C: stopping execution" in said and "removed /home/hpc/x on the head node" in said
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_second_ctrl_c_inside_a_library_while_following_leaves_run_local_at_once(stand_ins, python_handler,
                                                                                   monkeypatch):
    from stepcluster.tools.client import Runs

    def follow(self, follower, **kwargs):
        signal.raise_signal(signal.SIGINT)      # the first Ctrl-C: asks the loop to stop
        ctrl_c_inside_a_library()               # the second, before the loop acted, inside a library
        pytest.fail("the second Ctrl-C did not stop run-local")
    monkeypatch.setattr(Runs, "follow", follow)
    lines = []
    with pytest.raises(runner.Interrupted) as raised:
        runner.run_local(stand_ins["config"], "demo", progress=lines.append, **stand_ins["kwargs"])
    assert f"finish the cleanup with: stepcluster cleanup {raised.value.execution}" in "\n".join(lines)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_second_ctrl_c_leaves_run_local_at_once(stand_ins, python_handler):
    import time

    stand_ins["cleanup_seconds"] = 60
    lines = []
    _ctrl_c_when(stand_ins["in_flight"], stand_ins["cleanup_started"])
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt) as raised:
        runner.run_local(stand_ins["config"], "demo", progress=lines.append, **stand_ins["kwargs"])
    assert isinstance(raised.value, runner.Interrupted), "a bare KeyboardInterrupt: nothing said"
    assert time.monotonic() - started < 20, lines                      # not the cleanup's 60 s
    name = raised.value.execution
    assert f"finish the cleanup with: stepcluster cleanup {name}" in "\n".join(lines)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
