"""`stepcluster run-local`: the deployed definition, executed here for real.

The substituted definition runs in moto's Step Functions interpreter; each Lambda task reaches
the project's handlers through LocalLambdaEndpoint; the handlers SSH (with a pinned host key
and a private key read from moto's Secrets Manager) to the local cluster's head node.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import shlex
import signal
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

from stepcluster import cleanup_client, definition, secrets
from stepcluster.config import JobsConfig, load_jobs_config
from stepcluster.errors import InputError
from stepcluster.local.lambda_endpoint import FUNCTIONS, LocalLambdaEndpoint
from stepcluster.tools import client
from stepcluster.tools.client import RunReport, Runs
from stepcluster.plan import build_plan
from stepcluster.remote import ssh

REGION = "us-east-1"
log = logging.getLogger(__name__)
ACCOUNT = "123456789012"
DEFAULT_RIG = "/tmp/stepcluster-rig"
ARTIFACTS_BUCKET = "stepcluster-local-artifacts"
STATE_MACHINE = "stepcluster-local"
#: After a Ctrl-C, how long to wait for moto's interpreter to end the execution: it ends once
#: the Lambda call in flight returns (a poll takes seconds; a submit that stages large files,
#: longer). The cleanup then runs even if it has not, and says so.
STOP_WAIT_SECONDS = 60
#: The error and cause a Ctrl-C stops the execution with (what the report says).
INTERRUPTED_ERROR, INTERRUPTED_CAUSE = "Interrupted", "run-local was interrupted (Ctrl-C)"


@dataclass(frozen=True)
class LocalCluster:
    """The head node brought up by scripts/local-cluster.sh."""

    host: str = "127.0.0.1"
    port: int = 2222
    user: str = "hpc"
    rig: Path = Path(os.environ.get("STEPCLUSTER_RIG", DEFAULT_RIG))

    @property
    def private_key(self) -> str:
        return (self.rig / "ssh" / "client_ed25519").read_text()

    @property
    def host_key(self) -> str:
        return (self.rig / "ssh" / "host_ed25519.pub").read_text().strip()

    def check(self) -> None:
        for path in (self.rig / "ssh" / "client_ed25519", self.rig / "ssh" / "host_ed25519.pub"):
            if not path.exists():
                raise FileNotFoundError(
                    f"{path} is missing: the local cluster is not set up (run `make cluster-up`)")


class Interrupted(KeyboardInterrupt):
    """A second Ctrl-C while the cleanup of the first ran: run-local exits at once. `left`
    says what may still be on the head node and the command that finishes the cleanup (the
    lines were already given to `progress`)."""

    def __init__(self, execution: str, left: list[str]):
        self.execution, self.left = execution, left
        super().__init__("\n".join(left))


def run_local(config_path: str, cluster_name: str, *, scheduler: str = "slurm",
              backend: str = "existing", cluster: LocalCluster | None = None,
              execution_input: dict | None = None,
              progress: Callable[[str], None] = lambda line: None,
              timeout: float = 3600, settings_overrides: dict | None = None,
              on_start: Callable[[LocalLambdaEndpoint], None] | None = None,
              on_finish: Callable[["RunReport"], None] | None = None,
              standin_failure: str | None = None, s3_dir: str | Path | None = None,
              artifacts_dir: str | Path | None = None, staging: str = "ssh",
              resume: str | None = None, max_hours: float | None = None) -> RunReport:
    """Run CONFIG end to end; raises ConfigError for a bad config, FileNotFoundError for no rig.

    backend "existing" uses the local head node as it is; "cfncluster" runs cfncluster's own
    code against moto with a stand-in stack template whose head node is the local one (moto
    creates no machines), so creation, status, head node discovery and deletion all happen.

    `on_start(endpoint)` is called inside the AWS mock before the execution starts: tests use
    it to put S3 objects in place, to make a function fail, or to break the stand-in stack.
    `on_finish(report)` is called inside the mock after the execution ended: tests count what
    is left in (moto's) AWS there, or play the EventBridge cleanup of an aborted run.
    `standin_failure`: with cfncluster, the stand-in stack fails to create with this reason.

    There is no real S3 here, so two folders stand in for it:
    `s3_dir`: loaded into (moto's) S3 before the run: its first level are bucket names, below
    are keys (`s3://bucket/prefix/` in a config is read from `S3_DIR/bucket/prefix/`).
    `artifacts_dir`: after the run, everything the run wrote to the artifacts bucket is
    written here with the same keys (`ARTIFACTS_DIR/EXECUTION/JOB/stdout`...).
    `resume`: an earlier execution (name or ARN) whose finished jobs are not run again; its
    manifest is read from `artifacts_dir` (where that run-local wrote it) into the bucket.
    `max_hours`: the execution's budget (its input's max_hours).
    `staging="head-node"`: the head node downloads the jobs' files itself with presigned URLs;
    S3 is then also served over HTTP on 127.0.0.1 (moto's server), which the head node reaches.

    Ctrl-C (a KeyboardInterrupt, SIGINT) while the execution runs does what AWS does when a
    user stops it: the execution ends ABORTED and the cluster function runs the EventBridge
    rule's cleanup (cancel the jobs, keep their results, remove the run's folder); the report
    says ABORTED and `artifacts_dir` gets what was kept. A second Ctrl-C during that cleanup
    raises Interrupted (a KeyboardInterrupt) at once, after saying what may be left and the
    `stepcluster cleanup` command that finishes it (cleanup_local).
    """
    config = load_jobs_config(config_path)
    cluster = cluster or LocalCluster()
    cluster.check()
    overrides = {"backend": backend, "staging": staging, **(settings_overrides or {})}
    with tempfile.TemporaryDirectory(prefix="stepcluster-plan-") as plan_dir, \
            local_environment(plan_dir, cluster, scheduler, overrides):
        from moto import mock_aws  # lazily: only run-local and the tests need moto

        # The interpreter logs an ERROR for an IsPresent test on an absent path, though it
        # handles it as AWS does; what goes wrong in a run is in the execution history.
        logging.getLogger("moto.stepfunctions.parser").setLevel(logging.CRITICAL)

        with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}), \
                LocalLambdaEndpoint() as endpoint, _s3_over_http(staging == "head-node"):
            cluster_config = _local_cluster_config(backend, cluster, scheduler, Path(plan_dir),
                                                   standin_failure)
            _load_s3_dir(s3_dir)
            plan = build_plan(config, Path(plan_dir) / "plan", backend=backend, cluster_config=cluster_config)
            os.environ["STEPCLUSTER_PLAN_DIR"] = str(Path(plan_dir) / "plan")
            _install_head_node_key(cluster)
            _deploy(plan)
            if resume is not None:
                _load_manifest(artifacts_dir, resume)
            if execution_input is None:
                execution_input = client.execution_input(cluster_name, resume=resume, max_hours=max_hours)
            os.environ["AWS_ENDPOINT_URL_LAMBDA"] = endpoint.url
            if on_start:
                on_start(endpoint)
            report = _execute(plan, cluster_name, execution_input, endpoint, progress, timeout, artifacts_dir)
            if artifacts_dir:
                _write_artifacts(Path(artifacts_dir))
            if on_finish:
                on_finish(report)
            return report


def cleanup_local(execution: str, *, scheduler: str = "slurm", cluster: LocalCluster | None = None,
                  settings_overrides: dict | None = None, artifacts_dir: str | Path | None = None,
                  progress: Callable[[str], None] = lambda line: None) -> dict:
    """`stepcluster cleanup EXECUTION` for a run-local execution (its name or ARN): what a
    Ctrl-C's cleanup does, afterwards (after a second Ctrl-C, a killed run-local, a lost
    terminal). Idempotent: nothing of the execution on the head node is said, not an error.

    The local functions are set up as for a run (moto, LocalLambdaEndpoint, the head node's
    key in moto's Secrets Manager), and the cluster function is invoked, through
    AWS_ENDPOINT_URL_LAMBDA as a deployed one is (cleanup_client.invoke_cleanup), with the
    EventBridge rule's event: its cleanup finds the folder, cancels the jobs, keeps their
    results in the (moto) artifacts bucket, which are then written to `artifacts_dir` with
    the same keys as run-local's, and removes the folder. The cleanup needs no jobs config:
    it reads the run's folder; the plan the functions load is an empty one.

    Returns the cluster function's result; raises InputError for a name that is not an
    execution's, FileNotFoundError for no local cluster, CleanupFailed when the function
    raised."""
    if execution.startswith("arn:"):
        name = cleanup_client.parse_execution_arn(execution).name
    elif cleanup_client.EXECUTION_NAME.match(execution):
        name = execution
    else:
        raise InputError(f"{execution!r} is not an execution name (run-local's look like "
                         "local-20261202-080000-1a2b3c) or ARN")
    arn = f"arn:aws:states:{REGION}:{ACCOUNT}:execution:{STATE_MACHINE}:{name}"
    cluster = cluster or LocalCluster()
    cluster.check()
    overrides = {"backend": "existing", **(settings_overrides or {})}
    with tempfile.TemporaryDirectory(prefix="stepcluster-plan-") as plan_dir, \
            local_environment(plan_dir, cluster, scheduler, overrides):
        from moto import mock_aws

        with mock_aws(), LocalLambdaEndpoint() as endpoint:
            from stepcluster.plan import build_plan

            build_plan(JobsConfig(path="(stepcluster cleanup)", order="parallel", jobs=()),
                       Path(plan_dir) / "plan")
            os.environ["STEPCLUSTER_PLAN_DIR"] = str(Path(plan_dir) / "plan")
            boto3_client("s3").create_bucket(Bucket=ARTIFACTS_BUCKET)
            _install_head_node_key(cluster)
            os.environ["AWS_ENDPOINT_URL_LAMBDA"] = endpoint.url
            progress(f"cleanup of {name} on {cluster.user}@{cluster.host}:{cluster.port}: the cluster "
                     "function, with the EventBridge rule's event")
            result = cleanup_client.invoke_cleanup(boto3_client("lambda"), "ClusterFunction",
                                                   cleanup_client.cleanup_event(arn))
            for line in _describe_cleanup(result, name):
                progress(line)
            if artifacts_dir and cleanup_client.removed_a_folder(result):
                _write_artifacts(Path(artifacts_dir))
                progress(f"results written to {artifacts_dir}/{name}/")
            elif cleanup_client.removed_a_folder(result):
                progress("(no --artifacts-dir: the results were kept only in this command's stand-in "
                         "for S3, gone when it exits)")
            return result


@contextlib.contextmanager
def _s3_over_http(enabled: bool):
    """moto's S3 on an HTTP port of 127.0.0.1, for a head node that downloads by itself."""
    if not enabled:
        yield
        return
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ["AWS_ENDPOINT_URL_S3"] = f"http://{host}:{port}"
    try:
        yield
    finally:
        server.stop()


def boto3_client(service: str):
    import boto3
    return boto3.client(service, region_name=REGION)


def _load_s3_dir(folder) -> None:
    """Each first-level folder is a bucket; the files below it are its objects."""
    if not folder:
        return
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--s3-dir {folder} is not a folder")
    s3 = boto3_client("s3")
    for bucket in sorted(p for p in folder.iterdir() if p.is_dir()):
        s3.create_bucket(Bucket=bucket.name)
        for path in sorted(p for p in bucket.rglob("*") if p.is_file()):
            s3.upload_file(str(path), bucket.name, path.relative_to(bucket).as_posix())


def _load_manifest(folder, execution: str) -> None:
    """The manifest of the run to resume, from the `--artifacts-dir` an earlier run-local wrote
    it to, into the artifacts bucket (its results stay in the folder: the new run's manifest
    points at them). None there: the run fails at Create Cluster saying so, as in AWS."""
    name = str(execution).rsplit(":", 1)[-1]
    path = Path(folder or ".") / name / "manifest.json"
    if folder and path.is_file():
        boto3_client("s3").upload_file(str(path), ARTIFACTS_BUCKET, f"{name}/manifest.json")


def _write_artifacts(folder: Path) -> None:
    s3 = boto3_client("s3")
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=ARTIFACTS_BUCKET):
        for obj in page.get("Contents", []):
            target = folder / obj["Key"]
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(ARTIFACTS_BUCKET, obj["Key"], str(target))


def _local_cluster_config(backend: str, cluster: LocalCluster, scheduler: str, folder: Path,
                          standin_failure: str | None) -> Path | None:
    """For cfncluster: the stand-in stack in moto, a cfncluster config using it, and the local
    head node's key registered as the user's own key pair (the local sshd accepts only it)."""
    if backend == "existing":
        return None
    if backend != "cfncluster":
        raise ValueError(f"run-local supports the existing and cfncluster backends, not {backend!r}")
    import boto3

    from stepcluster.local.cfncluster_standin import install_standin, write_local_cfncluster_config

    ec2 = boto3.client("ec2", region_name=REGION)
    standin = install_standin(boto3.client("s3", region_name=REGION), ec2, bucket="stepcluster-local-templates",
                              head_node_host=cluster.host, user=cluster.user, scheduler=scheduler,
                              fail_reason=standin_failure)
    public_key = (cluster.rig / "ssh" / "client_ed25519.pub").read_text()
    ec2.import_key_pair(KeyName="local-head-node", PublicKeyMaterial=public_key.encode())
    os.environ["STEPCLUSTER_SSH_KEY_NAME"] = "local-head-node"
    return write_local_cfncluster_config(folder / "cfncluster.config", standin)


def _install_head_node_key(cluster: LocalCluster) -> None:
    """The head node's SSH key in (moto's) Secrets Manager, where the functions read it."""
    secret = boto3_client("secretsmanager").create_secret(
        Name="stepcluster/local-head-node-key", SecretString=cluster.private_key)
    os.environ["STEPCLUSTER_SSH_KEY_SECRET_ID"] = secret["ARN"]


#: The embedded stack: its outputs are a deployed one's (StateMachineArn, ArtifactsBucketName),
#: so that run-local, like `stepcluster start --stack`, finds its state machine through them.
LOCAL_STACK = "stepcluster-local"
_LOCAL_STACK_TEMPLATE = {
    "Parameters": {"StateMachineArn": {"Type": "String"}},
    "Resources": {"ArtifactsBucket": {"Type": "AWS::S3::Bucket", "Properties": {"BucketName": ARTIFACTS_BUCKET}}},
    "Outputs": {"StateMachineArn": {"Value": {"Ref": "StateMachineArn"}},
                "ArtifactsBucketName": {"Value": {"Ref": "ArtifactsBucket"}}}}


def _deploy(plan) -> None:
    """What `sam deploy` makes, in moto: the state machine from the shipped definition (every
    function ARN served by the local endpoint) and a stack whose outputs name it and the
    artifacts bucket."""
    values = {f"{name}Arn": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}" for name in FUNCTIONS}
    values["JobsPlanDigest"] = plan.digest
    machine = boto3_client("stepfunctions").create_state_machine(
        name=STATE_MACHINE, definition=definition.substitute(definition.read_definition(), values),
        roleArn=f"arn:aws:iam::{ACCOUNT}:role/stepcluster-local")["stateMachineArn"]
    boto3_client("cloudformation").create_stack(
        StackName=LOCAL_STACK, TemplateBody=json.dumps(_LOCAL_STACK_TEMPLATE),
        Parameters=[{"ParameterKey": "StateMachineArn", "ParameterValue": machine}])


def _execute(plan, cluster_name, execution_input, endpoint, progress, timeout,
             artifacts_dir=None) -> RunReport:
    runs = Runs.of_stack(LOCAL_STACK, REGION)
    sfn = runs.sfn
    ssh_before = ssh.connections_opened
    execution_name = f"local-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    cleanup = None
    with _ctrl_c_requests() as interrupt:
        arn = runs.start(execution_input, name=execution_name)
        progress(f"execution {execution_name} started ({len(plan.jobs)} jobs, {plan.order}, "
                 f"scheduler {os.environ['STEPCLUSTER_SCHEDULER']})")
        follower = runs.follower(arn, progress, events_after=_moto_events_after)
        try:
            described = runs.follow(follower, every=0.2, wait=interrupt.wait,
                                    on_tick=_ticker(sfn, arn, timeout, interrupt))
        except _CtrlCAgain:
            raise _left_behind(execution_name, progress, artifacts_dir) from None
        except KeyboardInterrupt:
            interrupted = True
        except Exception:
            if interrupt.again:     # the second Ctrl-C, as a library's own error (_ctrl_c_noted)
                raise _left_behind(execution_name, progress, artifacts_dir) from None
            raise
        else:
            interrupted = False
    if interrupted:        # outside the `with`: a second Ctrl-C raises again, at once
        described, cleanup = _interrupted(sfn, arn, follower, endpoint, progress, artifacts_dir)
        interrupted = described["status"] != "SUCCEEDED"
    report = runs.report(described, follower, plan.names)
    if cleanup is not None:
        report.jobs = _as_kept(report.jobs, execution_name)
    # here the endpoint counts the calls it served, and the SSH connections are this process's
    report.counts.update(lambda_invocations=endpoint.total_invocations,
                         ssh_connections=ssh.connections_opened - ssh_before)
    if interrupted and report.status == "RUNNING":
        report.status = "ABORTED"      # stopped: AWS says so at once, moto once its Lambda call returns
    if interrupted:
        # moto's StopExecution drops the error and cause it is given; AWS would show them
        report.error, report.cause = report.error or INTERRUPTED_ERROR, report.cause or INTERRUPTED_CAUSE
    report.invocations, report.interrupted, report.cleanup = dict(endpoint.invocations), interrupted, cleanup
    report.durations = {k: list(v) for k, v in endpoint.durations.items()}
    return report


def _ticker(sfn, arn, timeout, interrupt: threading.Event):
    """Before each look: Ctrl-C (seen here, between two calls to moto, as KeyboardInterrupt),
    and past `timeout`, the execution stopped (run-local gives up)."""
    deadline = time.monotonic() + timeout
    stopped = []

    def tick():
        if interrupt.is_set():
            raise KeyboardInterrupt
        if time.monotonic() > deadline and not stopped:
            sfn.stop_execution(executionArn=arn, error="RunLocalTimeout",
                               cause=f"run-local gave up after {timeout:.0f} s")
            stopped.append(True)
    return tick


@contextlib.contextmanager
def _sigint_handled_by(handler):
    """`handler` for SIGINT within the block: only in the main thread (the only one Python lets
    set a handler), and only over Python's own handler (a caller that ignores SIGINT, or
    handles it itself, keeps it so). The previous handler is back on the way out, whatever
    happened: run_local is a library function, called in-process by tests."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _ctrl_c_requests():
    """While the execution runs, Ctrl-C (SIGINT) only sets the event it yields: the polling
    loop acts on it between two calls into moto, whose interpreter threads share its state (a
    KeyboardInterrupt in the middle of one of those calls could leave it half-updated). Where
    no handler can be set (`_sigint_handled_by`), a KeyboardInterrupt still ends the loop."""
    interrupt = _CtrlC()

    def on_sigint(signum, frame):
        if interrupt.is_set():     # twice before the loop acted on the first: exit at once
            interrupt.again = True
            raise _CtrlCAgain
        interrupt.set()

    with _sigint_handled_by(on_sigint):
        yield interrupt


class _CtrlC(threading.Event):
    """Set by the first Ctrl-C; `again` by a second one before the loop acted on the first."""

    again = False


class _CtrlCAgain(KeyboardInterrupt):
    """A second Ctrl-C that came before the polling loop saw the first."""


@contextlib.contextmanager
def _ctrl_c_noted():
    """During the cleanup, Ctrl-C raises KeyboardInterrupt as usual and is also noted in the
    event it yields: a library may catch the KeyboardInterrupt and raise its own error instead
    (botocore's CRT signer does: awscrt's AWS_ERROR_UNKNOWN), which is then still known for
    the Ctrl-C it was."""
    again = threading.Event()

    def on_sigint(signum, frame):
        again.set()
        raise KeyboardInterrupt

    with _sigint_handled_by(on_sigint):
        yield again


def _interrupted(sfn, arn, follower, endpoint, progress, artifacts_dir=None) -> tuple[dict, dict | None]:
    """The first Ctrl-C: what a user's Stop does in AWS, then what the EventBridge rule does.

    Stop the execution (ABORTED: the definition's teardown states are skipped, as in AWS),
    wait (bounded) for the interpreter to end it, then invoke the cluster function with the
    rule's event through the endpoint the state machine's own calls take: its cleanup cancels
    the run's jobs, keeps their results in the artifacts bucket and removes the run's folder.
    A second Ctrl-C meanwhile raises Interrupted at once, saying what may be left.

    Returns (DescribeExecution, the cleanup's result or None when it failed)."""
    name = arn.rsplit(":", 1)[-1]
    with _ctrl_c_noted() as again:
        try:
            return _stop_and_clean_up(sfn, arn, follower, endpoint, artifacts_dir)
        except KeyboardInterrupt:
            raise _left_behind(name, progress, artifacts_dir) from None
        except Exception:
            if again.is_set():      # the second Ctrl-C, as a library's own error
                raise _left_behind(name, progress, artifacts_dir) from None
            raise


def _stop_and_clean_up(sfn, arn, follower, endpoint, artifacts_dir):
    """The first Ctrl-C's work (`_interrupted`). Its calls to moto run in this (the main)
    thread, where a second Ctrl-C lands; the cleanup's, in a thread of its own
    (`_waiting_in_short_steps`), so a Ctrl-C meets this thread waiting for it, never a library."""
    name = arn.rsplit(":", 1)[-1]
    follower.say(f"Ctrl-C: stopping execution {name} and cleaning up (Ctrl-C again to exit at once)")
    sfn.stop_execution(executionArn=arn, error=INTERRUPTED_ERROR, cause=INTERRUPTED_CAUSE)
    deadline = time.monotonic() + STOP_WAIT_SECONDS
    while (described := sfn.describe_execution(executionArn=arn))["status"] == "RUNNING":
        if endpoint.calls_in_flight() == {"PollJobsFunction"}:
            # A polling round waiting on the head node (PollWindowSeconds): it ends when
            # the cleanup below cancels its jobs or removes the run's folder.
            break
        if time.monotonic() > deadline:
            follower.say(f"  the execution has not ended after {STOP_WAIT_SECONDS} s "
                         "(a Lambda call still running): cleaning up anyway")
            break
        time.sleep(0.2)
    follower.update()
    follower.stopped = described["status"] == "RUNNING"
    if described["status"] == "SUCCEEDED":     # it ended by itself meanwhile: no rule fires
        follower.say("execution SUCCEEDED before it could be stopped: nothing to clean up")
        return described, None
    follower.say(f"execution {described['status']}; cleanup: the cluster function, with the "
                 "EventBridge rule's event")
    event = cleanup_client.cleanup_event(
        arn, status=described["status"] if described["status"] != "RUNNING" else "ABORTED",
        input=described.get("input"))
    try:
        result = _waiting_in_short_steps(lambda: endpoint.invoke("ClusterFunction", event))
    except Exception as exc:  # noqa: BLE001 - said, with how to finish; the report follows
        follower.say(f"  the cleanup failed: {type(exc).__name__}: {exc}")
        for line in _what_may_be_left(name, artifacts_dir)[1:]:
            follower.say(f"  {line}")
        return described, None
    for line in _describe_cleanup(result, name):
        follower.say(f"  {line}")
    if described["status"] == "RUNNING":
        # A polling round that was waiting on the head node ends now that its folder is
        # gone. moto then ends the stopped execution as that call's error would; AWS shows
        # it ABORTED from the stop on, and so does the report.
        deadline = time.monotonic() + STOP_WAIT_SECONDS
        while (described := sfn.describe_execution(executionArn=arn))["status"] == "RUNNING" \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        described = {**described, "status": "ABORTED", "error": INTERRUPTED_ERROR, "cause": INTERRUPTED_CAUSE}
    return described, result


def _waiting_in_short_steps(call):
    """`call()` in a daemon thread, waited for 0.2 s at a time; its result or its exception.

    So that a second Ctrl-C stops run-local at once: the kernel may deliver SIGINT to any
    thread, and Python runs its handler in the main thread only when that thread next runs
    Python code; a main thread inside one long call (an SSH command, a wait) would not see it
    until the call returned (measured: 60 s for a 60 s call, about one run in five). The
    cleanup thread left behind by a second Ctrl-C ends with the process (the CLI exits);
    `stepcluster cleanup` finishes its work."""
    outcome = {}

    def run():
        try:
            outcome["result"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread as it is
            outcome["error"] = exc

    worker = threading.Thread(target=run, name="run-local-cleanup", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.2)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def _left_behind(execution: str, progress, artifacts_dir=None) -> Interrupted:
    """A second Ctrl-C: say what may be left and how to finish; the Interrupted to raise."""
    left = _what_may_be_left(execution, artifacts_dir)
    progress("Ctrl-C again: exiting now, the cleanup did not finish.")
    for line in left:
        progress(f"  {line}")
    return Interrupted(execution, left)


def _what_may_be_left(execution: str, artifacts_dir=None) -> list[str]:
    """After an unfinished cleanup: the execution, its folder on the head node, the command
    (with run-local's own --artifacts-dir, so that the results still land where it was told)."""
    from stepcluster.settings import Settings

    settings = Settings.from_env()
    root = settings.remote_root if settings.remote_root.startswith("/") else f"~/{settings.remote_root}"
    command = ["stepcluster", "cleanup", execution]
    if settings.scheduler != "slurm":
        command += ["--scheduler", settings.scheduler]
    if settings.remote_root != Settings.remote_root:
        command += ["--parameter-overrides", f"RemoteWorkRoot={settings.remote_root}"]
    if artifacts_dir:
        command += ["--artifacts-dir", str(artifacts_dir)]
    return [f"what may be left of execution {execution}: its jobs (queued or running) and its folder "
            f"{root}/{execution} on {settings.head_node_user}@{settings.head_node_host}:{settings.head_node_port}",
            f"finish the cleanup with: {shlex.join(command)}"]


def _describe_cleanup(result: dict, execution: str) -> list[str]:
    """The cleanup's result and what it kept (the manifest it wrote), as lines for a person."""
    lines = []
    manifest = _kept_manifest(execution)
    jobs = (manifest or {}).get("jobs") or {}
    cancelled = [f"{name} (job {job.get('job_id')})" for name, job in jobs.items() if job.get("state") == "CANCELLED"]
    if cancelled:
        lines.append(f"cancelled: {', '.join(cancelled)}")
    kept = [name for name, job in jobs.items() if job.get("results")]
    if kept:
        lines.append(f"results kept: {', '.join(kept)} in s3://{ARTIFACTS_BUCKET}/{execution}/ (manifest.json)")
    return lines + cleanup_client.describe_released(result, execution)


def _kept_manifest(execution: str) -> dict | None:
    """The manifest the cleanup wrote in (moto's) artifacts bucket, or None."""
    s3 = boto3_client("s3")
    try:
        return json.loads(s3.get_object(Bucket=ARTIFACTS_BUCKET, Key=f"{execution}/manifest.json")["Body"].read())
    except s3.exceptions.NoSuchKey:
        return None


def _as_kept(jobs: list[dict], execution: str) -> list[dict]:
    """Each job as the cleanup left it (a job it cancelled: CANCELLED), not as the last poll
    saw it before the Ctrl-C."""
    kept = ((_kept_manifest(execution) or {}).get("jobs")) or {}
    rows = []
    for row in jobs:
        job = kept.get(row["name"])
        if job:
            row = {**row, **{k: job.get(k) for k in ("job_id", "state", "exit_code", "started", "ended")
                             if job.get(k) is not None}, "results": job.get("results") or row["results"]}
        rows.append(row)
    return rows


def _moto_events_after(arn: str, seen: int) -> list[dict] | None:
    """The execution's history events after the first `seen`, read from moto's interpreter in
    this process; None where that is not possible (then the API is read).

    moto's GetExecutionHistory deep-copies the whole history on every call and ignores
    maxResults and reverseOrder, so following a run through it costs O(history) per look: for
    200 sequential jobs, more CPU than the handlers it hosts. The interpreter appends events to
    one list under a lock; this copies only the new ones. tests/unit/test_run_local_history.py
    fails if a moto release moves that list, rather than this silently falling back."""
    try:
        from moto.stepfunctions.parser.models import stepfunctions_parser_backends

        backend = stepfunctions_parser_backends[ACCOUNT][REGION]
        manager = backend.describe_execution(arn).exec_worker.env.event_manager
        with manager._mutex:
            new = copy.deepcopy(manager._history_event_list[seen:])
    except (ImportError, AttributeError, KeyError, TypeError):
        return None
    except Exception as exc:  # noqa: BLE001 - moto's own "no such execution", whatever its class
        log.debug("moto's history not readable in place: %s: %s", type(exc).__name__, exc)
        return None
    for event in new:      # kept as ISO text inside; the API (and so its readers) gives datetimes
        if isinstance(event.get("timestamp"), str):
            event["timestamp"] = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
    return new


@contextlib.contextmanager
def local_environment(plan_dir: str, cluster: LocalCluster, scheduler: str, overrides: dict):
    """Set what the template would set (and dummy AWS credentials); restore it afterwards."""
    from stepcluster import runtime

    saved = dict(os.environ)
    os.environ.update({
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION,
        "STEPCLUSTER_PLAN_DIR": plan_dir, "STEPCLUSTER_BACKEND": "existing",
        "STEPCLUSTER_SCHEDULER": scheduler, "STEPCLUSTER_HEAD_NODE_HOST": cluster.host,
        "STEPCLUSTER_HEAD_NODE_PORT": str(cluster.port), "STEPCLUSTER_HEAD_NODE_USER": cluster.user,
        "STEPCLUSTER_HEAD_NODE_HOST_KEY": cluster.host_key, "STEPCLUSTER_CLUSTER_POLL_SECONDS": "1",
        "STEPCLUSTER_ARTIFACTS_BUCKET": ARTIFACTS_BUCKET, "STEPCLUSTER_RELEASE_FUNCTION": "ReleaseHeadNodeFunction",
        **{f"STEPCLUSTER_{k.upper()}": str(v) for k, v in overrides.items()},
    })
    runtime.reset()
    secrets.forget()
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
        runtime.reset()
        secrets.forget()
