#!/usr/bin/env python3
"""What each Lambda function needs, measured here: time, CPU and peak memory of its work, the
figures template.yaml's MemorySize and Timeout comments quote.

Usage: .venv/bin/python scripts/measure_functions.py [--results] [--json]

- every function's first call path: its handler module, the run service, paramiko and the boto3
  clients it makes (cfncluster 1.6.1 for the python3.11 cluster function; pcluster.lib alone for
  the ParallelCluster function);
- pcluster.lib: a real `create_cluster` of examples/parallelcluster.yaml, which synthesizes the
  cluster's stack with ParallelCluster's own CDK builder (Node.js), under moto; then
  `describe_cluster` and `delete_cluster` of that cluster;
- `--results` (needs the local cluster: `make cluster-up`): the Release Head Node function's
  results streaming (functions/stepcluster/results.py: one tar.gz over SSH, one S3 upload per
  file) from the local head node into a local S3 (moto's server, in its own process so that the
  uploaded bytes do not count as the function's memory), for one big file and many small ones.

Each case runs in a fresh Python process. "peak tree RSS" is the sum of the resident sizes of the
process and its children (CDK's Node.js runs beside Python; both count against a Lambda's
memory), sampled every 20 ms from /proc: an upper bound (shared pages count twice). "CPU" is user
+ system seconds of the process tree. Lambda gives a function CPU in proportion to its memory
(1,769 MB = one vCPU: AWS Lambda developer guide, configuration-memory), so a CPU-bound step that
takes C CPU-seconds here takes about C * 1769 / MemorySize seconds on Lambda below 1,769 MB,
assuming one of this machine's cores is worth one Lambda vCPU (the table prints that estimate).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FUNCTIONS = ROOT / "functions"
VCPU_MB = 1769  # Lambda: at 1,769 MB a function has the equivalent of one vCPU
REGION = "us-east-1"
#: What a pcluster create needs answered that moto cannot answer (see create_cluster_case).
SUPPRESSED = ["type:HeadNodeLaunchTemplateValidator", "type:KeyPairValidator",
              "type:ComputeResourceLaunchTemplateValidator"]


# ---------------------------------------------------------------- the process tree, from /proc
def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as handle:
                    fields = handle.read().rsplit(b")", 1)[1].split()
                tree.setdefault(int(fields[1]), []).append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return tree


def _tree(pid: int) -> list[int]:
    children, found, todo = _children(), [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_seconds_of_descendants(pid: int) -> float:
    """utime + stime of the live descendants of pid (not pid itself)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for child in _tree(pid)[1:]:
        try:
            with open(f"/proc/{child}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
        except (OSError, IndexError, ValueError):
            continue
    return total


class Meter:
    """Wall time, CPU seconds and peak tree RSS of `with meter.phase(name):` blocks."""

    def __init__(self, interval: float = 0.02):
        self.pid = os.getpid()
        self.interval = interval
        self.phases: dict[str, dict] = {}
        self._peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, sum(_rss_kb(p) for p in _tree(self.pid)))
            self._stop.wait(self.interval)

    def _cpu(self) -> float:
        own = resource.getrusage(resource.RUSAGE_SELF)
        reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime
                + _cpu_seconds_of_descendants(self.pid))

    @contextlib.contextmanager
    def phase(self, name: str):
        self._peak = sum(_rss_kb(p) for p in _tree(self.pid))
        start, cpu = time.perf_counter(), self._cpu()
        yield
        self._peak = max(self._peak, sum(_rss_kb(p) for p in _tree(self.pid)))
        self.phases[name] = {"wall_s": round(time.perf_counter() - start, 3),
                             "cpu_s": round(self._cpu() - cpu, 3),
                             "peak_tree_rss_mb": round(self._peak / 1024, 1),
                             # the process's own peak so far (ru_maxrss: between two samples too)
                             "maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}

    def report(self, **extra) -> dict:
        self._stop.set()
        self._thread.join()
        return {"phases": self.phases,
                "maxrss_self_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                **extra}


# ---------------------------------------------------------------- cases (each in a fresh process)
FIRST_CALL = {
    # function -> (handler module, extra modules its first call imports, boto3 clients it makes)
    "PrepareHeadNodeFunction": ("prepare_head_node", ["stepcluster.remote.ssh"], ["secretsmanager"]),
    "SubmitJobsFunction": ("submit_jobs", ["stepcluster.remote.ssh"], ["secretsmanager", "s3"]),
    "PollJobsFunction": ("poll_jobs", ["stepcluster.remote.ssh"], ["secretsmanager", "s3"]),
    "CancelJobsFunction": ("cancel_jobs", ["stepcluster.remote.ssh"], ["secretsmanager"]),
    "ReleaseHeadNodeFunction": ("release_head_node", ["stepcluster.remote.ssh"], ["secretsmanager", "s3"]),
    "ClusterFunction": ("cluster", ["cfncluster.cfncluster", "stepcluster.keys"],
                        ["cloudformation", "ec2", "secretsmanager", "stepfunctions"]),
}


def _dummy_aws_env() -> None:
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION=REGION, AWS_REGION=REGION)
    os.environ.setdefault("STEPCLUSTER_BACKEND", "existing")
    for name, value in (("SCHEDULER", "slurm"), ("HEAD_NODE_HOST", "127.0.0.1"),
                        ("HEAD_NODE_USER", "hpc"), ("HEAD_NODE_HOST_KEY", "SHA256:" + "A" * 43),
                        ("SSH_KEY_SECRET_ID", "x"), ("ARTIFACTS_BUCKET", "artifacts")):
        os.environ.setdefault(f"STEPCLUSTER_{name}", value)


def first_call_case(function: str) -> dict:
    import importlib
    import warnings

    warnings.simplefilter("ignore")
    _dummy_aws_env()
    sys.path.insert(0, str(FUNCTIONS))
    module, extra, clients = FIRST_CALL[function]
    meter = Meter()
    with meter.phase("first call"):
        importlib.import_module(f"handlers.{module}")
        from stepcluster.runtime import service
        service()
        for name in extra:
            importlib.import_module(name)
        import boto3
        for client in clients:
            boto3.client(client, region_name=REGION)
    return meter.report()


def pcluster_import_case() -> dict:
    meter = Meter()
    with meter.phase("import pcluster.lib"):
        import pcluster.lib  # noqa: F401
    return meter.report()


def _answer_what_moto_cannot():
    """A botocore before-call hook on every client: moto refuses the cluster bucket's
    SecureTransport deny policy, and cannot parse the synthesized template in CreateStack.
    CreateStack gets a one-resource template instead (keeping pcluster's tags and parameters),
    so that describe_cluster and delete_cluster then work on a real moto stack."""
    import botocore.session
    from botocore.awsrequest import AWSResponse

    seen = {}

    def hook(params, model, **_):
        seen.setdefault(model.name, 0)
        seen[model.name] += 1
        if model.name == "PutBucketPolicy":
            return AWSResponse("https://x", 200, {}, None), {}
        if model.name == "CreateStack":
            body = params["body"]
            url = body.pop("TemplateURL", None)
            seen["template_url"] = url
            body["TemplateBody"] = json.dumps({"Resources": {"Stub": {"Type": "AWS::SNS::Topic"}}})
        return None

    original = botocore.session.Session.create_client

    def create_client(self, *args, **kwargs):
        client = original(self, *args, **kwargs)
        client.meta.events.register("before-call", hook)
        return client

    botocore.session.Session.create_client = create_client
    return seen


def create_cluster_case() -> dict:
    import logging
    import warnings

    import yaml

    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    _dummy_aws_env()
    meter = Meter()
    import moto

    with meter.phase("import pcluster.lib"):
        import pcluster.lib as pc
    seen = _answer_what_moto_cannot()
    with moto.mock_aws():
        import boto3
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.ec2.models import ec2_backends
        from moto.ec2.models.amis import Ami

        ec2 = boto3.client("ec2", region_name=REGION)
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
        ec2.create_key_pair(KeyName="measure-key")
        version = pc.__dict__.get("__version__") or _installed_pcluster()
        backend = ec2_backends[DEFAULT_ACCOUNT_ID][REGION]
        ami_id = "ami-0123456789abcdef0"
        backend.amis[ami_id] = Ami(
            backend, ami_id=ami_id,
            name=f"aws-parallelcluster-{version}-amzn2023-hvm-x86_64-202601010000 2026-01-01T00-00-00.000Z",
            owner_alias="amazon", architecture="x86_64", root_device_name="/dev/xvda",
            root_device_type="ebs", virtualization_type="hvm", public=True,
            tags={"parallelcluster:version": version})
        config = yaml.safe_load((ROOT / "examples" / "parallelcluster.yaml").read_text())
        config["HeadNode"]["Networking"]["SubnetId"] = subnet
        config["HeadNode"]["Ssh"] = {"KeyName": "measure-key"}
        for queue in config["Scheduling"]["SlurmQueues"]:
            queue["Networking"]["SubnetIds"] = [subnet]
        _create_named_roles(config)
        with meter.phase("create_cluster (CDK synth)"):
            created = pc.create_cluster(cluster_name="c1", cluster_configuration=config,
                                        rollback_on_failure=False, region=REGION,
                                        suppress_validators=SUPPRESSED)
        with meter.phase("describe_cluster"):
            described = pc.describe_cluster(cluster_name="c1", region=REGION)
        with meter.phase("delete_cluster"):
            try:
                pc.delete_cluster(cluster_name="c1", region=REGION)
                deleted = "accepted"
            except Exception as exc:  # noqa: BLE001 - moto deletes at once: pcluster then says 404
                deleted = f"accepted, then {type(exc).__name__} (moto deletes the stack at once)"
        template_size = None
        url = seen.get("template_url") or ""
        if "/" in url:
            bucket, key = url.split(".s3.", 1)[0].split("//", 1)[1], url.split(".com/", 1)[1]
            template_size = boto3.client("s3", region_name=REGION).head_object(
                Bucket=bucket, Key=key)["ContentLength"]
    return meter.report(
        pcluster_version=version,
        created=created.get("cluster", {}).get("clusterStatus"),
        described=described.get("clusterStatus"), deleted=deleted,
        synthesized_template_bytes=template_size,
        calls={k: v for k, v in sorted(seen.items()) if k != "template_url"})


def _create_named_roles(config) -> None:
    """The IAM roles the config names (pcluster's validators look them up), in moto."""
    import boto3

    iam = boto3.client("iam", region_name=REGION)
    trust = json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": ["ec2.amazonaws.com", "lambda.amazonaws.com"]},
         "Action": "sts:AssumeRole"}]})

    def walk(node):
        if isinstance(node, dict):
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value)
        elif isinstance(node, str) and ":role/" in node:
            yield node

    for arn in set(walk(config)):
        path, _, name = ("/" + arn.split(":role/", 1)[1]).rpartition("/")
        iam.create_role(RoleName=name, Path=path + "/", AssumeRolePolicyDocument=trust)


def _installed_pcluster() -> str:
    from importlib.metadata import version
    return version("aws-parallelcluster")


# ---------------------------------------------------------------- results streaming
RESULT_CASES = {
    # name -> (files, bytes per file): written by the job into its output folder
    "1 file x 10 MB": (1, 10 * 2**20),
    "1 file x 100 MB": (1, 100 * 2**20),
    "1 file x 300 MB": (1, 300 * 2**20),  # memory must not grow with the size (a stream)
    "100 files x 10 KB": (100, 10 * 2**10),
    "1,000 files x 10 KB": (1000, 10 * 2**10),
}


def _local_cluster():
    sys.path.insert(0, str(FUNCTIONS))
    from stepcluster.local.runner import LocalCluster
    from stepcluster.remote.ssh import HeadNodeConnection

    cluster = LocalCluster()
    cluster.check()
    return HeadNodeConnection(cluster.host, cluster.port, cluster.user, cluster.private_key,
                              cluster.host_key)


def _write_job_files(ssh, run_dir: str, files: int, size: int) -> None:
    """One job's files as the job wrapper leaves them; incompressible output (the worst case
    for the head node's gzip and for the bytes on the wire)."""
    job = f"{run_dir}/jobs/measured"
    script = (f"set -e\nmkdir -p {job}/output\necho out > {job}/stdout\necho err > {job}/stderr\n"
              f"echo '0 0 1700000000' > {job}/result\n")
    if files == 1:
        script += f"head -c {size} /dev/urandom > {job}/output/data.bin\n"
    else:
        script += (f"head -c {size * files} /dev/urandom > {job}/blob\n"
                   f"cd {job}/output && split -a 5 -d -b {size} ../blob f && rm ../blob\n")
    ssh.run_script(script)


def results_case(name: str) -> dict:
    import boto3

    sys.path.insert(0, str(FUNCTIONS))
    from stepcluster import results

    bucket, run_dir = os.environ["MEASURE_BUCKET"], os.environ["MEASURE_RUN_DIR"]
    s3 = boto3.client("s3", region_name=REGION, endpoint_url=os.environ["MEASURE_S3"])
    run = {"execution": f"measure-{uuid.uuid4().hex[:8]}", "cluster_name": "measure",
           "cluster": {"run_dir": run_dir, "status": "READY"},
           "jobs": {"measured": {"job_id": "1", "state": "SUCCEEDED"}}}
    meter = Meter()
    with _local_cluster() as ssh:
        ssh.connect()
        with meter.phase("collect"):
            kept = results.collect(ssh, run, bucket, s3_client=s3)
    files, size = RESULT_CASES[name]
    return meter.report(files=files + 3, megabytes=round(files * size / 2**20, 2),
                        jobs_collected=kept["jobs_collected"])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def local_s3():
    """moto's S3 server in its own process (started here, stopped by its pid)."""
    port = _free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1",
                               "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                break
            time.sleep(0.2)
        import boto3
        url = f"http://127.0.0.1:{port}"
        _dummy_aws_env()
        boto3.client("s3", region_name=REGION, endpoint_url=url).create_bucket(Bucket="artifacts")
        yield url
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()


# ---------------------------------------------------------------- the parent: run, tabulate
def run_child(case: str, env: dict | None = None) -> dict:
    result = subprocess.run([sys.executable, __file__, "--case", case], capture_output=True, text=True,
                            env={**os.environ, **(env or {})}, timeout=900)
    if result.returncode != 0:
        raise RuntimeError(f"case {case!r} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def worst(reports: list[dict]) -> dict:
    """Phase by phase, the largest of each figure over the repeats (and how many there were)."""
    merged = json.loads(json.dumps(reports[0]))
    for name, phase in merged["phases"].items():
        for key in phase:
            phase[key] = max(r["phases"][name][key] for r in reports)
        phase["runs"] = len(reports)
        phase["wall_s_min"] = min(r["phases"][name]["wall_s"] for r in reports)
    return merged


def template_sizes() -> dict[str, tuple[int, int]]:
    """Each function's (MemorySize, Timeout) in template.yaml, the Globals where it sets none."""
    from cfnlint.decode import cfn_yaml

    template = cfn_yaml.load(str(ROOT / "template.yaml"))
    defaults = template["Globals"]["Function"]
    return {name: (int(r["Properties"].get("MemorySize", defaults["MemorySize"])),
                   int(r["Properties"].get("Timeout", defaults["Timeout"])))
            for name, r in template["Resources"].items() if r["Type"] == "AWS::Serverless::Function"}


def lambda_seconds(phase: dict, memory_mb: int) -> float:
    """Expected Lambda time of CPU-bound work: this machine's CPU-seconds at Lambda's share
    (below 1,769 MB), and never less than the wall time measured here."""
    return max(phase["cpu_s"] * VCPU_MB / memory_mb, phase["wall_s"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", action="store_true", help="also measure results streaming (local cluster)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each case; the table shows the worst")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.case:  # a child: one case, one JSON line
        kind, _, name = args.case.partition(":")
        report = {"first-call": lambda: first_call_case(name), "pcluster-import": pcluster_import_case,
                  "pcluster-create": create_cluster_case, "results": lambda: results_case(name)}[kind]()
        print(json.dumps(report))
        return 0

    def measure(case: str, env: dict | None = None) -> dict:
        return worst([run_child(case, env) for _ in range(max(1, args.repeat))])

    rows = []  # (function, what, phase figures, note)
    report = {"machine": _machine(), "repeat": args.repeat}
    for function in FIRST_CALL:
        rows.append((function, "first call: imports, service, clients",
                     measure(f"first-call:{function}")["phases"]["first call"], ""))
    report["pcluster_import"] = imported = measure("pcluster-import")
    rows.append(("ParallelClusterFunction", "import pcluster.lib", imported["phases"]["import pcluster.lib"], ""))
    report["pcluster_create"] = created = measure("pcluster-create")
    for name, phase in created["phases"].items():
        if name != "import pcluster.lib":
            rows.append(("ParallelClusterFunction", name, phase,
                         f"template {created['synthesized_template_bytes']} B" if "synth" in name else ""))
    if args.results:
        report["results"] = {}
        with local_s3() as url, _local_cluster() as ssh:
            home = ssh.run(["sh", "-c", "echo $HOME"]).stdout.strip()
            for name, (files, size) in RESULT_CASES.items():
                run_dir = f"stepcluster-measure/{uuid.uuid4().hex[:8]}"
                try:
                    _write_job_files(ssh, run_dir, files, size)
                    measured = measure(f"results:{name}", {
                        "MEASURE_BUCKET": "artifacts", "MEASURE_S3": url,
                        "MEASURE_RUN_DIR": f"{home}/{run_dir}"})
                finally:
                    ssh.run(["rm", "-rf", "--", run_dir])
                report["results"][name] = measured
                rows.append(("ReleaseHeadNodeFunction", f"results: {name}", measured["phases"]["collect"],
                             f"{measured['files']} files, {measured['megabytes']} MB"))
            ssh.run(["rmdir", "--ignore-fail-on-non-empty", "stepcluster-measure"], check=False)
    sizes = template_sizes()
    report["rows"] = [{"function": f, "what": w, **p, "note": n,
                       "template_memory_mb": sizes[f][0], "template_timeout_s": sizes[f][1],
                       "lambda_s_estimate": round(lambda_seconds(p, sizes[f][0]), 2)} for f, w, p, n in rows]
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"machine: {report['machine']}; worst of {max(1, args.repeat)} run(s) per case")
    print(f"{'function':<24} {'what':<38} {'wall s':>7} {'CPU s':>6} {'tree MB':>7} {'self MB':>7}"
          f" {'MB/Timeout':>13} {'Lambda s':>8}  note")
    for row in report["rows"]:
        print(f"{row['function']:<24} {row['what']:<38} {row['wall_s']:>7.2f} {row['cpu_s']:>6.2f} "
              f"{row['peak_tree_rss_mb']:>7.0f} {row['maxrss_mb']:>7.0f} "
              f"{row['template_memory_mb']:>6}/{row['template_timeout_s']:<6} {row['lambda_s_estimate']:>8.1f}  "
              f"{row['note']}")
    print("tree MB: peak resident size of the process and its children (Node.js for the CDK), "
          "sampled; self MB: the Python process's own peak (ru_maxrss, so far in that process).\n"
          "Lambda s: max(CPU s x 1769 / MemorySize, wall s) at the template's MemorySize: CPU-bound "
          "work at Lambda's CPU share, one local core taken as one vCPU; waits on AWS APIs (and, "
          "for results, on real S3) not included.")
    return 0


def _machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}"


if __name__ == "__main__":
    sys.exit(main())
