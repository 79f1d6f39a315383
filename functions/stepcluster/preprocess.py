"""`stepcluster preprocess`: a jobs config becomes what `sam build && sam deploy` ship.

Writes, so that no file is edited by hand:
- functions/plan/plan.json and functions/plan/payloads/*.tar.gz (the plan, bundled with the
  functions by `sam build`);
- samconfig.toml's parameter_overrides entries JobsPlanDigest (the definition's substitution
  that ties the state machine to this plan) and JobSourceBucketArns / JobSourceObjectArns (the
  S3 read permissions of the submit function, exactly the config's s3_uri sources).
"""

from __future__ import annotations

import os
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

from stepcluster.config import Problem, load_jobs_config
from stepcluster.errors import ConfigError
from stepcluster.plan import BUNDLED_PLAN_DIR, Plan, build_plan

CHECKOUT = Path(__file__).resolve().parents[2]
#: A CloudFormation parameter value holds at most 4,096 bytes.
MAX_PARAMETER_BYTES = 4096


@dataclass(frozen=True)
class PreprocessResult:
    plan: Plan
    plan_dir: Path
    samconfig: Path
    overrides: dict[str, str]
    warnings: tuple
    uploader: "PackageUploader | None" = None

    def describe(self) -> str:
        return (f"plan {self.plan.digest}: {len(self.plan.jobs)} jobs, {self.plan.order}\n"
                f"  wrote {self.plan_dir}/plan.json"
                f" and {sum(1 for j in self.plan.jobs if j.archive and not j.package_uri)} bundled package(s)\n"
                + (f"  packages in s3://{self.uploader.bucket}/packages/: {len(self.uploader.uploaded)} uploaded, "
                   f"{len(self.uploader.present)} already there\n" if self.uploader else "") +
                f"  updated {self.samconfig}: " + ", ".join(f"{k}" for k in self.overrides) + "\n"
                "next: sam build && sam deploy --guided")


def source_arns(plan: Plan) -> tuple[list[str], list[str]]:
    """IAM resources for reading the plan's S3 sources: bucket ARNs and object ARNs.

    Object ARNs name each source prefix; a prefix inside another is dropped. When the list
    would not fit one CloudFormation parameter, each bucket's prefixes are merged into their
    longest common prefix (broader, still no more than the buckets the config names).
    """
    prefixes: dict[str, set[str]] = {}
    for job in plan.jobs:
        for uri in (job.s3_uri, job.package_uri):   # uploaded packages are read like sources
            if uri:
                bucket, _, key = uri[5:].partition("/")
                prefixes.setdefault(bucket, set()).add(key)

    def arns(merge: bool) -> list[str]:
        found = []
        for bucket, keys in sorted(prefixes.items()):
            if merge:
                keys = {os.path.commonprefix(sorted(keys))}
            kept = [k for k in sorted(keys) if not any(k != o and k.startswith(o) for o in keys)]
            found += [f"arn:aws:s3:::{bucket}/{k}*" for k in kept]
        return found

    objects = arns(merge=False)
    if len(",".join(objects).encode()) > MAX_PARAMETER_BYTES:
        objects = arns(merge=True)
    return [f"arn:aws:s3:::{b}" for b in sorted(prefixes)], objects


def check_cluster_config(backend: str, cluster_config) -> list[Problem]:
    """The backend's cluster configuration, checked before anything is deployed."""
    if backend == "existing":
        if cluster_config:
            return [Problem(str(cluster_config), None, None, None,
                            "an existing head node takes no cluster configuration (its settings are "
                            "template parameters): leave out --cluster-config")]
        return []
    if not cluster_config:
        return [Problem("--cluster-config", None, None, None,
                        f"backend {backend} needs its cluster configuration file")]
    if not Path(cluster_config).is_file():
        return [Problem(str(cluster_config), None, None, None, "no such file")]
    if backend == "parallelcluster":
        from stepcluster.clusters.parallelcluster_config import check_parallelcluster_config
        return check_parallelcluster_config(cluster_config)
    from stepcluster.clusters.cfncluster_config import check_cfncluster_config
    return check_cfncluster_config(cluster_config)


class PackageUploader:
    """Puts local_path packages in S3 under packages/, once: a key is its content's hash, so an
    unchanged job is never uploaded again."""

    def __init__(self, bucket: str, s3_client=None):
        import boto3

        self.bucket, self.s3 = bucket, s3_client or boto3.client("s3")
        self.uploaded, self.present = [], []

    def __call__(self, name: str, data: bytes) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        key = f"packages/{Path(name).name}"
        try:
            self.s3.head_object(Bucket=self.bucket, Key=key)
            self.present.append(key)
        except ClientError:
            try:
                self.s3.put_object(Bucket=self.bucket, Key=key, Body=data)
            except (ClientError, BotoCoreError) as exc:
                raise ConfigError([Problem(name, None, None, None,
                                           f"cannot upload to s3://{self.bucket}/{key}: {exc}")]) from None
            self.uploaded.append(key)
        return f"s3://{self.bucket}/{key}"


def stack_artifacts_bucket(samconfig: Path, cfn_client=None) -> str:
    """The deployed stack's ArtifactsBucketName output (stack name from samconfig.toml)."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    data = tomllib.loads(samconfig.read_text()) if samconfig.exists() else {}
    stack = data.get("default", {}).get("deploy", {}).get("parameters", {}).get("stack_name", "stepcluster")
    try:
        outputs = (cfn_client or boto3.client("cloudformation")).describe_stacks(StackName=stack)["Stacks"][0].get("Outputs", [])
    except (ClientError, BotoCoreError) as exc:
        raise ConfigError([Problem(str(samconfig), None, None, "stack_name",
                                   f"cannot read stack {stack!r} ({exc}): deploy once first, or name "
                                   "the bucket with --packages-bucket BUCKET")]) from None
    for output in outputs:
        if output["OutputKey"] == "ArtifactsBucketName":
            return output["OutputValue"]
    raise ConfigError([Problem(str(samconfig), None, None, "stack_name",
                               f"stack {stack!r} has no ArtifactsBucketName output")])


def preprocess(config_path, *, plan_dir=None, samconfig=None, backend: str = "existing",
               cluster_config=None, packages_bucket: str | None = None) -> PreprocessResult:
    """Validate the jobs config (and the cluster configuration), write the plan and samconfig.

    local_path packages are bundled with the plan (shipped inside the functions), or, with
    `packages_bucket` (a bucket name, or "auto" for the deployed stack's artifacts bucket),
    uploaded there once and staged from S3 like an s3_uri.
    """
    problems = []
    try:
        config = load_jobs_config(config_path)
    except ConfigError as exc:
        problems += exc.problems
        config = None
    problems += [p for p in check_cluster_config(backend, cluster_config) if p.severity == "error"]
    if problems:
        raise ConfigError(problems)
    plan_dir = Path(plan_dir or BUNDLED_PLAN_DIR)
    samconfig = Path(samconfig or CHECKOUT / "samconfig.toml")
    uploader = None
    if packages_bucket:
        bucket = stack_artifacts_bucket(samconfig) if packages_bucket == "auto" else packages_bucket
        uploader = PackageUploader(bucket)
    plan = build_plan(config, plan_dir, backend=backend,
                      cluster_config=Path(cluster_config) if cluster_config else None, upload=uploader)
    buckets, objects = source_arns(plan)
    overrides = {"ClusterBackend": backend, "JobsPlanDigest": plan.digest,
                 "JobSourceBucketArns": ",".join(buckets), "JobSourceObjectArns": ",".join(objects)}
    too_long = [Problem(str(config_path), None, None, None,
                        f"the S3 sources need a {key} parameter of {len(value.encode())} bytes, over "
                        f"CloudFormation's {MAX_PARAMETER_BYTES}: put the jobs' files under fewer "
                        "S3 prefixes") for key, value in overrides.items()
                if len(value.encode()) > MAX_PARAMETER_BYTES]
    if too_long:
        raise ConfigError(too_long)
    update_parameter_overrides(samconfig, overrides)
    return PreprocessResult(plan, plan_dir, samconfig, overrides, config.warnings, uploader)


def update_parameter_overrides(samconfig: Path, values: dict[str, str]) -> None:
    """Set `values` in [default.deploy.parameters] parameter_overrides, keeping everything else."""
    text = samconfig.read_text() if samconfig.exists() else "version = 0.1\n"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([Problem(str(samconfig), None, None, None, f"not valid TOML: {exc}")]) from None
    deploy = data.get("default", {}).get("deploy", {}).get("parameters", {})
    current = deploy.get("parameter_overrides", "")
    pairs = current if isinstance(current, list) else shlex.split(current)
    overrides = dict(pair.split("=", 1) for pair in pairs if "=" in pair)
    overrides.update(values)
    rendered = " ".join(f'{k}="{v}"' for k, v in overrides.items())
    line = "parameter_overrides = " + _toml_string(rendered)

    lines = text.splitlines()
    start = next((i for i, l in enumerate(lines) if l.strip() == "[default.deploy.parameters]"), None)
    if start is None:
        lines += ["", "[default.deploy.parameters]", line]
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
        existing = next((i for i in range(start + 1, end)
                         if re.match(r"\s*parameter_overrides\s*=", lines[i])), None)
        if existing is None:
            lines.insert(end, line)
        else:
            lines[existing] = line
    samconfig.write_text("\n".join(lines) + "\n")
    tomllib.loads(samconfig.read_text())  # what we wrote must read back


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
