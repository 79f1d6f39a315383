"""`stepcluster run-local`: the deployed definition, executed here for real.

The substituted definition runs in moto's Step Functions interpreter; each Lambda task reaches
the project's handlers through LocalLambdaEndpoint; the handlers SSH (with a pinned host key
and a private key read from moto's Secrets Manager) to the local cluster's head node.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from stepcluster import definition, secrets
from stepcluster.config import load_jobs_config
from stepcluster.local.lambda_endpoint import FUNCTIONS, LocalLambdaEndpoint
from stepcluster.plan import build_plan
from stepcluster.remote import ssh

REGION = "us-east-1"
ACCOUNT = "123456789012"
DEFAULT_RIG = "/tmp/stepcluster-rig"
ARTIFACTS_BUCKET = "stepcluster-local-artifacts"


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


@dataclass
class RunReport:
    status: str
    cause: str | None
    error: str | None
    jobs: list[dict]
    counts: dict
    execution_arn: str
    output: dict | None = None
    invocations: dict = field(default_factory=dict)
    events: list[dict] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        return {"status": self.status, "error": self.error, "cause": self.cause, "jobs": self.jobs,
                "counts": self.counts, "execution_arn": self.execution_arn}


def run_local(config_path: str, cluster_name: str, *, scheduler: str = "slurm",
              backend: str = "existing", cluster: LocalCluster | None = None,
              execution_input: dict | None = None,
              progress: Callable[[str], None] = lambda line: None,
              timeout: float = 3600, settings_overrides: dict | None = None,
              on_start: Callable[[LocalLambdaEndpoint], None] | None = None,
              on_finish: Callable[["RunReport"], None] | None = None,
              standin_failure: str | None = None, s3_dir: str | Path | None = None,
              artifacts_dir: str | Path | None = None, staging: str = "ssh") -> RunReport:
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
    `staging="head-node"`: the head node downloads the jobs' files itself with presigned URLs;
    S3 is then also served over HTTP on 127.0.0.1 (moto's server), which the head node reaches.
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
            boto3_client("s3").create_bucket(Bucket=ARTIFACTS_BUCKET)
            plan = build_plan(config, Path(plan_dir) / "plan", backend=backend, cluster_config=cluster_config)
            os.environ["STEPCLUSTER_PLAN_DIR"] = str(Path(plan_dir) / "plan")
            if on_start:
                on_start(endpoint)
            os.environ["AWS_ENDPOINT_URL_LAMBDA"] = endpoint.url
            report = _execute(plan, cluster, cluster_name, execution_input, endpoint, progress, timeout)
            if artifacts_dir:
                _write_artifacts(Path(artifacts_dir))
            if on_finish:
                on_finish(report)
            return report


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


def _execute(plan, cluster, cluster_name, execution_input, endpoint, progress, timeout) -> RunReport:
    import boto3

    secret = boto3.client("secretsmanager", region_name=REGION).create_secret(
        Name="stepcluster/local-head-node-key", SecretString=cluster.private_key)
    os.environ["STEPCLUSTER_SSH_KEY_SECRET_ID"] = secret["ARN"]
    values = {f"{name}Arn": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}" for name in FUNCTIONS}
    values["JobsPlanDigest"] = plan.digest
    sfn = boto3.client("stepfunctions", region_name=REGION)
    machine = sfn.create_state_machine(
        name="stepcluster-local", definition=definition.substitute(definition.read_definition(), values),
        roleArn=f"arn:aws:iam::{ACCOUNT}:role/stepcluster-local")["stateMachineArn"]
    ssh_before = ssh.connections_opened
    execution_name = f"local-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    arn = sfn.start_execution(
        stateMachineArn=machine, name=execution_name,
        input=json.dumps(execution_input if execution_input is not None else {"cluster_name": cluster_name}),
    )["executionArn"]
    progress(f"execution {execution_name} started ({len(plan.jobs)} jobs, {plan.order}, "
             f"scheduler {os.environ['STEPCLUSTER_SCHEDULER']})")

    follower = _HistoryFollower(sfn, arn, progress)
    deadline = time.monotonic() + timeout
    while True:
        described = sfn.describe_execution(executionArn=arn)
        follower.update()
        if described["status"] != "RUNNING":
            break
        if time.monotonic() > deadline:
            sfn.stop_execution(executionArn=arn, error="RunLocalTimeout",
                               cause=f"run-local gave up after {timeout:.0f} s")
            time.sleep(1)
            continue
        time.sleep(0.2)
    follower.update()
    output = json.loads(described["output"]) if described.get("output") else None
    run = output or follower.last_run or {}
    results = (run.get("results") or {}).get("prefix")
    jobs = [_job_row(name, job, results) for name, job in run.get("jobs", {}).items()] or \
        [_job_row(job.name, {"state": "NOT_STARTED"}, None) for job in plan.jobs]
    events = follower.events
    counts = {
        "history_events": len(events),
        "state_transitions": sum(1 for e in events if e["type"].endswith("StateEntered")),
        "lambda_invocations": endpoint.total_invocations,
        "ssh_connections": ssh.connections_opened - ssh_before,
    }
    return RunReport(described["status"], described.get("cause"), described.get("error"),
                     jobs, counts, arn, output, dict(endpoint.invocations), events)


def _job_row(name: str, job: dict, results_prefix: str | None) -> dict:
    return {"name": name, "job_id": job.get("job_id"), "state": job.get("state"),
            "exit_code": job.get("exit_code"), "started": job.get("started"), "ended": job.get("ended"),
            "results": job.get("results") or (f"{results_prefix}{name}/" if results_prefix and job.get("job_id") else None)}


class _HistoryFollower:
    """Reads the execution history as it grows; reports state and job changes."""

    def __init__(self, sfn, arn, progress):
        self.sfn, self.arn, self.progress = sfn, arn, progress
        self.events: list[dict] = []
        self.last_run: dict | None = None
        self._job_states: dict[str, str] = {}
        self._silent_since: int | None = None
        self._t0 = time.monotonic()

    def update(self) -> None:
        events, token = [], None
        while True:
            page = self.sfn.get_execution_history(executionArn=self.arn, maxResults=1000,
                                                  **({"nextToken": token} if token else {}))
            events.extend(page["events"])
            token = page.get("nextToken")
            if not token:
                break
        for event in events[len(self.events):]:
            self._report(event)
        self.events = events

    def _say(self, text: str) -> None:
        self.progress(f"[{time.monotonic() - self._t0:6.1f}s] {text}")

    def _report(self, event: dict) -> None:
        kind = event["type"]
        if kind.endswith("StateEntered"):
            name = event["stateEnteredEventDetails"]["name"]
            if name not in ("Wait For Jobs", "Poll Jobs", "Are Jobs Done?"):
                self._say(name)
        elif kind.endswith("StateExited"):
            try:
                state = json.loads(event["stateExitedEventDetails"].get("output") or "{}")
            except ValueError:
                return
            run = state.get("run") if isinstance(state, dict) else None
            if isinstance(run, dict) and "jobs" in run:
                self.last_run = run
                silent = run.get("scheduler_silent_since")
                if silent != self._silent_since:
                    self._silent_since = silent
                    self._say(f"  the scheduler does not answer ({run.get('scheduler_said')}): "
                              "waiting for it, the jobs go on" if silent is not None
                              else "  the scheduler answers again")
                for name, job in run["jobs"].items():
                    if self._job_states.get(name, "NOT_STARTED") != job["state"]:
                        self._job_states[name] = job["state"]
                        detail = f" (job {job['job_id']})" if job.get("job_id") else ""
                        if job.get("exit_code") is not None:
                            detail += f", exit code {job['exit_code']}"
                        self._say(f"  job {name}: {job['state']}{detail}")
        elif kind == "ExecutionFailed":
            details = event.get("executionFailedEventDetails", {})
            self._say(f"execution FAILED: {details.get('error')}: {details.get('cause')}")
        elif kind == "ExecutionSucceeded":
            self._say("execution SUCCEEDED")


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
