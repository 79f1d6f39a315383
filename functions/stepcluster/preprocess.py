"""`stepcluster preprocess`: a jobs config becomes what `sam build && sam deploy` ship.

Writes, so that no file is edited by hand:
- functions/plan/plan.json and functions/plan/payloads/*.tar.gz (the plan, bundled with the
  functions by `sam build`);
- samconfig.toml's parameter_overrides entries JobsPlanDigest (the definition's substitution
  that ties the state machine to this plan), JobSourceBucketArns / JobSourceObjectArns (the
  S3 read permissions of the submit function, exactly the config's s3_uri sources),
  ParallelClusterIamMode, and, when given, UsePublicAddress / VpcSubnetIds / VpcSecurityGroupIds.

Before anything is written it refuses what could not work once deployed: the template's Rule
CreatedClustersAreReachable (a created cluster reached by its private address from functions
outside any VPC), and a ParallelCluster config that would make pcluster create IAM roles the
deployment's IAM mode cannot create.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import tempfile
import tomllib
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from stepcluster.config import Problem, _bucket_problem, load_jobs_config
from stepcluster.errors import ConfigError
from stepcluster.plan import (BUNDLED_PLAN_DIR, Plan, new_staging_folder, swap_plan_folder,
                              unswap_plan_folder, write_plan)

CHECKOUT = Path(__file__).resolve().parents[2]
#: A CloudFormation parameter value holds at most 4,096 bytes.
MAX_PARAMETER_BYTES = 4096
#: Template parameters preprocess reads from samconfig.toml (and may be told on its command
#: line), with the template's defaults and the option that sets each.
DEPLOYMENT_SETTINGS = {
    "ParallelClusterIamMode": ("base", "--parallelcluster-iam"),
    "UsePublicAddress": ("false", "--use-public-address"),
    "VpcSubnetIds": ("", "--vpc-subnet-ids"),
    "VpcSecurityGroupIds": ("", "--vpc-security-group-ids"),
}
#: The template's AllowedPattern of each id list item, what it names, an example.
_ID_PATTERNS = {"VpcSubnetIds": (re.compile(r"subnet-[0-9a-f]+"), "subnet", "subnet-0123456789abcdef0"),
                "VpcSecurityGroupIds": (re.compile(r"sg-[0-9a-f]+"), "security group", "sg-0123456789abcdef0")}
#: IAM's policy variables for a literal *, ? and $ in a Resource (IAM User Guide, "IAM policy
#: elements: Variables and tags", special characters): a key's own "*" is not a wildcard.
_IAM_LITERALS = {"*": "${*}", "?": "${?}", "$": "${$}"}


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


def iam_literal(key: str) -> str:
    """An S3 key as it must appear in an IAM Resource to mean exactly itself: IAM reads "*" and
    "?" as wildcards and "${" as a policy variable, so those characters are written as IAM's
    special-character variables ${*}, ${?} and ${$}."""
    return "".join(_IAM_LITERALS.get(c, c) for c in key)


def source_arns(plan: Plan) -> tuple[list[str], list[str]]:
    """IAM resources for reading the plan's S3 sources: bucket ARNs and object ARNs.

    Object ARNs name each source prefix, followed by the one wildcard "*"; a prefix inside
    another is dropped. When the list would not fit one CloudFormation parameter, each bucket's
    prefixes are merged into their longest common prefix (broader, still no more than the
    buckets the config names). Merging works on the keys as written, and only then are their
    "*", "?" and "$" escaped (iam_literal): no pattern ever covers more than its prefix. A key
    with "," (which would split the list parameter) never gets here: the config refuses it.
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
            found += [f"arn:aws:s3:::{bucket}/{iam_literal(k)}*" for k in kept]
        return found

    for bucket, keys in prefixes.items():
        if _bucket_problem(bucket) or any("," in k for k in keys):   # never a silent widening
            raise ConfigError([Problem(f"s3://{bucket}/{sorted(keys)[0]}", None, None, None,
                                       "cannot be granted exactly as an S3 source (a bucket name "
                                       "or a key with ',')")])
    objects = arns(merge=False)
    if len(",".join(objects).encode()) > MAX_PARAMETER_BYTES:
        objects = arns(merge=True)
    return [f"arn:aws:s3:::{b}" for b in sorted(prefixes)], objects


def check_cluster_config(backend: str, cluster_config, iam_mode: str = "base") -> list[Problem]:
    """The backend's cluster configuration, checked before anything is deployed (`iam_mode`:
    the deployment's ParallelClusterIamMode)."""
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
        return check_parallelcluster_config(cluster_config, iam_mode)
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


@dataclass(frozen=True)
class Setting:
    """A template parameter's value for this deployment, and where it comes from."""

    value: str
    source: str            # the option, "samconfig.toml", or "the template's default"
    line: int | None = None

    def says(self) -> str:
        shown = f'"{self.value}"' if self.value else "empty"
        return f"{shown} ({self.source})"


def deployment_settings(samconfig: Path, given: dict[str, str | None]) -> dict[str, Setting]:
    """ParallelClusterIamMode, UsePublicAddress, VpcSubnetIds, VpcSecurityGroupIds: from the
    command line (`given`, None = not given), else samconfig.toml, else the template's default."""
    current, line = read_parameter_overrides(samconfig)
    settings = {}
    for name, (default, option) in DEPLOYMENT_SETTINGS.items():
        if given.get(name) is not None:
            settings[name] = Setting(given[name], option)
        elif name in current:
            settings[name] = Setting(current[name], samconfig.name, line)
        else:
            settings[name] = Setting(default, "the template's default")
    return settings


def deployment_problems(backend: str, settings: dict[str, Setting], samconfig: Path) -> list[Problem]:
    """What the template's Rules would refuse at deploy time, said here, before anything is
    built: ids that are not ids, and a created cluster its functions could never reach."""
    problems = []

    def problem(name, message):
        s = settings[name]   # said where it comes from: the option, or samconfig.toml's line
        path = s.source if s.source.startswith("--") else str(samconfig)
        problems.append(Problem(path, s.line, None, name, message))

    mode = settings["ParallelClusterIamMode"]
    if mode.value not in ("base", "privileged"):
        problem("ParallelClusterIamMode", f"must be base or privileged, got {mode.says()}")
    public = settings["UsePublicAddress"]
    if public.value not in ("true", "false"):
        problem("UsePublicAddress", f'must be "true" or "false", got {public.says()}')
    for name, (pattern, noun, example) in _ID_PATTERNS.items():
        bad = [i for i in settings[name].value.split(",") if i and not pattern.fullmatch(i)]
        if bad:
            problem(name, f"not {noun} ids (e.g. {example}): {', '.join(repr(b) for b in bad)}, in "
                          f"{settings[name].says()}")
    subnets, groups = (settings[n] for n in ("VpcSubnetIds", "VpcSecurityGroupIds"))
    if bool(subnets.value) != bool(groups.value):
        (given, _), (missing, unset) = sorted((("VpcSubnetIds", subnets), ("VpcSecurityGroupIds", groups)),
                                              key=lambda pair: not pair[1].value)
        problem(missing, f"is {unset.says()} while {given} is {settings[given].says()}: set both "
                         f"({DEPLOYMENT_SETTINGS[missing][1]}), or neither")
    if backend != "existing" and public.value == "false" and not (subnets.value and groups.value):
        problem("UsePublicAddress",
                f"is {public.says()}: backend {backend} reaches the head node by its private address, "
                f"but with VpcSubnetIds {subnets.says()} and VpcSecurityGroupIds {groups.says()} the "
                f"functions would run outside any VPC and could never connect (the run would fail "
                f"after a full cluster creation). Give subnets and security groups in the cluster's "
                f"VPC (--vpc-subnet-ids subnet-...,subnet-... --vpc-security-group-ids sg-...), or "
                f"--use-public-address true (the head node's subnet must then assign public addresses)")
    return problems


def _checked_inputs(config_path, samconfig: Path, given: dict, *, backend: str, cluster_config,
                    packages_bucket: str | None):
    """(jobs config, deployment settings, warnings), or ConfigError with every problem found in
    the jobs config, the deployment's settings, the cluster configuration and the bucket name."""
    problems, warnings = [], []
    try:
        config = load_jobs_config(config_path)
        warnings += config.warnings
    except ConfigError as exc:
        problems += exc.problems
        config = None
    settings = deployment_settings(samconfig, given)
    problems += deployment_problems(backend, settings, samconfig)
    iam_mode = settings["ParallelClusterIamMode"].value
    cluster = check_cluster_config(backend, cluster_config, iam_mode if iam_mode == "privileged" else "base")
    problems += [p for p in cluster if p.severity == "error"]
    warnings += [p for p in cluster if p.severity != "error"]
    scheduler = _deployed_scheduler(backend, cluster_config, samconfig) if config and not problems else None
    if scheduler:
        from stepcluster.jobrequests import check_config
        from stepcluster.schedulers import get_scheduler

        refused, overridden = check_config(config, get_scheduler(scheduler))
        problems += refused
        warnings += overridden
    if packages_bucket and packages_bucket != "auto" and _bucket_problem(packages_bucket):
        problems.append(Problem("--packages-bucket", None, None, None,
                                f"invalid bucket name {packages_bucket!r}: {_bucket_problem(packages_bucket)}"))
    if problems:
        raise ConfigError(problems)
    return config, settings, warnings


def _deployed_scheduler(backend: str, cluster_config, samconfig: Path) -> str | None:
    """The scheduler the deployment will submit to, where preprocess can know it: ParallelCluster
    3 runs Slurm, a cfncluster config names its own, an existing head node's is samconfig's
    Scheduler parameter (None when none is set yet: then only the run checks the requests)."""
    if backend == "parallelcluster":
        return "slurm"
    if backend == "cfncluster":
        from stepcluster.clusters.cfncluster_config import cfncluster_scheduler
        return cfncluster_scheduler(cluster_config)
    scheduler = read_parameter_overrides(samconfig)[0].get("Scheduler")
    return scheduler if scheduler in ("slurm", "sge", "torque") else None


def _parameter_overrides(plan, config_path, backend: str, settings: dict, given: dict) -> dict[str, str]:
    """The template parameters this plan sets in samconfig.toml; ConfigError for one over
    CloudFormation's parameter size limit."""
    buckets, objects = source_arns(plan)
    overrides = {"ClusterBackend": backend, "JobsPlanDigest": plan.digest,
                 "JobSourceBucketArns": ",".join(buckets), "JobSourceObjectArns": ",".join(objects),
                 "ParallelClusterIamMode": settings["ParallelClusterIamMode"].value,
                 **{name: value for name, value in given.items()
                    if value is not None and name != "ParallelClusterIamMode"}}
    too_long = [Problem(str(config_path), None, None, None,
                        f"the S3 sources need a {key} parameter of {len(value.encode())} bytes, over "
                        f"CloudFormation's {MAX_PARAMETER_BYTES}: put the jobs' files under fewer "
                        "S3 prefixes") for key, value in overrides.items()
                if len(value.encode()) > MAX_PARAMETER_BYTES]
    if too_long:
        raise ConfigError(too_long)
    return overrides


def preprocess(config_path, *, plan_dir=None, samconfig=None, backend: str = "existing",
               cluster_config=None, packages_bucket: str | None = None,
               parallelcluster_iam: str | None = None, use_public_address: str | None = None,
               vpc_subnet_ids: str | None = None, vpc_security_group_ids: str | None = None,
               check_network: bool = True, ec2_client=None) -> PreprocessResult:
    """Validate the jobs config, the cluster configuration and the deployment's settings; write
    the plan and samconfig.

    local_path packages are bundled with the plan (shipped inside the functions), or, with
    `packages_bucket` (a bucket name, or "auto" for the deployed stack's artifacts bucket),
    uploaded there once and staged from S3 like an s3_uri. `parallelcluster_iam`,
    `use_public_address`, `vpc_subnet_ids`, `vpc_security_group_ids` (None: keep samconfig's)
    set ParallelClusterIamMode, UsePublicAddress, VpcSubnetIds, VpcSecurityGroupIds. With
    subnets and `check_network`, their routes are checked with EC2 when credentials allow
    (warnings only).
    """
    samconfig = Path(samconfig or CHECKOUT / "samconfig.toml")
    given = {"ParallelClusterIamMode": parallelcluster_iam, "UsePublicAddress": use_public_address,
             "VpcSubnetIds": _id_list(vpc_subnet_ids), "VpcSecurityGroupIds": _id_list(vpc_security_group_ids)}
    config, settings, warnings = _checked_inputs(config_path, samconfig, given, backend=backend,
                                                 cluster_config=cluster_config, packages_bucket=packages_bucket)
    subnets = settings["VpcSubnetIds"]
    if check_network and subnets.value:
        from stepcluster.network import subnet_warnings
        warnings += subnet_warnings(subnets.value.split(","), source=subnets, samconfig=samconfig,
                                    ec2_client=ec2_client)
    plan_dir = Path(plan_dir or BUNDLED_PLAN_DIR)
    uploader = None
    if packages_bucket:
        bucket = stack_artifacts_bucket(samconfig) if packages_bucket == "auto" else packages_bucket
        uploader = PackageUploader(bucket)
    # Transactional: the new plan is written into a folder beside plan_dir and the new
    # samconfig.toml into a file beside it; every check runs on them; only then are they renamed
    # into place (plan first, then samconfig; a failure of the second puts the old plan back).
    # A refusal or a crash before that leaves plan_dir and samconfig.toml as they were. A crash
    # between the plan's two renames leaves the old plan whole beside plan_dir, put back by the
    # next run (plan.recover_plan_folder); one between the plan's swap and samconfig's rename
    # (nothing catches a killed process) leaves the new plan with the old JobsPlanDigest: the
    # deployed state machine then refuses to run it, saying to preprocess again.
    # Uploads (--packages-bucket) do happen before the swap, and are not undone: they are
    # content-addressed (packages/<hash>.tar.gz) and idempotent, so a package left by a refused
    # run is exactly what a later run of the same job would upload, and no deployed plan refers
    # to a package that is not there.
    staging = new_staging_folder(plan_dir)
    new_samconfig = None
    try:
        plan = write_plan(config, staging, backend=backend,
                          cluster_config=Path(cluster_config) if cluster_config else None, upload=uploader)
        overrides = _parameter_overrides(plan, config_path, backend, settings, given)
        new_samconfig = _write_beside(samconfig, samconfig_with_overrides(samconfig, overrides))
        old_plan = swap_plan_folder(staging, plan_dir)   # the last checks passed: commit
        try:
            os.replace(new_samconfig, samconfig)
        except OSError as exc:
            unswap_plan_folder(old_plan, plan_dir)
            raise ConfigError([Problem(str(samconfig), None, None, None,
                                       f"cannot be replaced ({exc.strerror or exc}): the plan and "
                                       f"samconfig.toml were left as they were")]) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)   # gone when swapped in
        if new_samconfig is not None and new_samconfig.exists():
            new_samconfig.unlink()
    if old_plan is not None:
        shutil.rmtree(old_plan, ignore_errors=True)  # stale payloads leave only after the swap
    plan = dataclasses.replace(plan, folder=plan_dir)
    return PreprocessResult(plan, plan_dir, samconfig, overrides, tuple(warnings), uploader)


def _id_list(value: str | None) -> str | None:
    """"subnet-a, subnet-b" -> "subnet-a,subnet-b" (None stays None: not given)."""
    if value is None:
        return None
    return ",".join(item.strip() for item in value.split(",") if item.strip())


def _read_samconfig(samconfig: Path) -> tuple[str, dict]:
    try:
        text = samconfig.read_text(encoding="utf-8") if samconfig.exists() else "version = 0.1\n"
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([Problem(str(samconfig), None, None, None, f"not valid TOML: {exc}")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([Problem(str(samconfig), None, None, None, f"cannot be read: {exc}")]) from None


def read_parameter_overrides(samconfig: Path) -> tuple[dict[str, str], int | None]:
    """[default.deploy.parameters] parameter_overrides as a dict, and the line it is on: read
    as SAM CLI reads it (parse_sam_overrides), so preprocess sees what `sam deploy` will."""
    text, data = _read_samconfig(samconfig)
    current = data.get("default", {}).get("deploy", {}).get("parameters", {}).get("parameter_overrides", "")
    try:
        overrides = parse_sam_overrides(current)
    except ValueError as exc:
        raise ConfigError([Problem(str(samconfig), None, None, "parameter_overrides",
                                   f"cannot be read: {exc}")]) from None
    start, end, existing = _overrides_position(_lines(text))
    return overrides, None if existing is None else existing + 1


def _lines(text: str) -> list[str]:
    """The lines of a TOML document: split on "\n" only (TOML's newline; str.splitlines would
    also split inside strings at \x85, U+2028, form feed, ...)."""
    lines = text.split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


def _overrides_position(lines: list[str]) -> tuple[int | None, int, int | None]:
    """Indexes of [default.deploy.parameters], the end of that table, its parameter_overrides."""
    start = next((i for i, l in enumerate(lines) if l.strip() == "[default.deploy.parameters]"), None)
    if start is None:
        return None, len(lines), None
    end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
    existing = next((i for i in range(start + 1, end) if re.match(r"\s*parameter_overrides\s*=", lines[i])), None)
    return start, end, existing


def update_parameter_overrides(samconfig: Path, values: dict[str, str]) -> None:
    """Set `values` in [default.deploy.parameters] parameter_overrides, keeping everything else.
    The file is replaced whole (written beside it, then renamed), or not at all."""
    new = _write_beside(samconfig, samconfig_with_overrides(samconfig, values))
    try:
        os.replace(new, samconfig)
    except OSError as exc:
        new.unlink(missing_ok=True)
        raise ConfigError([Problem(str(samconfig), None, None, None,
                                   f"cannot be replaced ({exc.strerror or exc}); it was left as it was")]) from None


def samconfig_with_overrides(samconfig: Path, values: dict[str, str]) -> str:
    """The text of `samconfig` with `values` set in its parameter_overrides, checked: valid TOML,
    everything else unchanged, and SAM CLI reading back exactly the overrides meant. A value SAM
    CLI could not read back is refused, naming its parameter (see sam_value)."""
    text, before = _read_samconfig(samconfig)
    overrides, line_no = read_parameter_overrides(samconfig)
    given = set(values)
    overrides.update(values)
    problems = []
    for name, value in overrides.items():
        why = sam_value_problem(value)
        if why:
            where = "" if name in given else f" (as samconfig.toml has it)"
            problems.append(Problem(str(samconfig), None if name in given else line_no, None, name,
                                    f"value {value!r}{where} cannot be written so that `sam deploy` "
                                    f"reads it back: {why}"))
    if problems:
        raise ConfigError(problems)
    rendered = " ".join(f"{k}={sam_value(v)}" for k, v in overrides.items())
    line = "parameter_overrides = " + _toml_string(rendered)

    lines = _lines(text)
    start, end, existing = _overrides_position(lines)
    if start is None:
        lines += ["", "[default.deploy.parameters]", line]
    elif existing is None:
        lines.insert(end, line)
    else:
        lines[existing] = line
    new_text = "\n".join(lines) + "\n"
    try:   # what we write must read back: TOML, and the same document but for the overrides
        after = tomllib.loads(new_text)
        params = after.get("default", {}).get("deploy", {}).get("parameters", {})
        written = params.pop("parameter_overrides")
        before.get("default", {}).get("deploy", {}).get("parameters", {}).pop("parameter_overrides", None)
        ok = parse_sam_overrides(written) == overrides and after == _with_table(before)
    except (tomllib.TOMLDecodeError, ValueError, KeyError):
        ok = False
    if not ok:
        raise ConfigError([Problem(str(samconfig), line_no, None, "parameter_overrides",
                                   "cannot be rewritten in place (it must be one line, "
                                   "parameter_overrides = \"...\", in [default.deploy.parameters]): "
                                   "put it on one line and run again")])
    return new_text


def _with_table(data: dict) -> dict:
    """`data` with an (empty) [default.deploy.parameters] table, as the rewrite adds one."""
    data.setdefault("default", {}).setdefault("deploy", {}).setdefault("parameters", {})
    return data


def _write_beside(target: Path, text: str) -> Path:
    """`text` in a new file beside `target` (same folder: os.replace onto it is atomic), with
    target's permissions; returns its path. Fsynced, so the rename never exposes a partial file."""
    try:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".new", dir=target.parent)
    except OSError as exc:
        raise ConfigError([Problem(str(target), None, None, None,
                                   f"cannot write beside it ({exc.strerror or exc}); nothing was changed")]) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if target.exists():
            shutil.copymode(target, name)
        else:
            os.chmod(name, 0o666 & ~_umask())
    except OSError as exc:
        Path(name).unlink(missing_ok=True)
        raise ConfigError([Problem(str(target), None, None, None,
                                   f"cannot write beside it ({exc.strerror or exc}); nothing was changed")]) from None
    return Path(name)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# SAM CLI's reading of a parameter_overrides string (samcli/cli/types.py, CfnParameterOverridesType,
# aws-sam-cli 1.170): pairs KEY=VALUE separated by spaces, found with re.findall; a VALUE is
# "..." or '...' (backslash escapes any character but a newline) or unquoted (up to a space, no
# quote); then one wrapping quote pair is stripped and only \<space>, \" and \' are unescaped: a
# backslash before any other character stays, and "\\" is two backslashes, not one.
_SAM_VALUE = r"""("(?:\\.|[^"\\]+)*"|'(?:\\.|[^'\\]+)*'|(?:\\.|[^ "\\]+)+)"""
_SAM_PAIR = re.compile(r"""(?:(?: )([A-Za-z0-9"']+)=""" + _SAM_VALUE + ")")
_SAM_LONG_PAIR = re.compile(r"""(?:ParameterKey=([A-Za-z0-9"']+),ParameterValue=""" + _SAM_VALUE + ")")


def _sam_unquote(value: str) -> str:
    if value and value[0] == value[-1] and value[0] in "\"'":
        value = value[1:-1]
    return value.replace("\\ ", " ").replace('\\"', '"').replace("\\'", "'")


def parse_sam_overrides(raw) -> dict[str, str]:
    """parameter_overrides (a string, a list of strings, or a table) as SAM CLI reads it.
    Raises ValueError for what SAM CLI would refuse (a string with no KEY=VALUE pair)."""
    if raw in ("", None) or raw == {}:
        return {}
    if isinstance(raw, dict):
        def text(v):
            if v is None:
                return ""
            if isinstance(v, list):
                return ",".join(str(x).strip() for x in v if x not in (None, ""))
            return str(v)
        return {_sam_unquote(str(k)): _sam_unquote(text(v)) for k, v in raw.items()}
    items = raw if isinstance(raw, list) else [raw]
    found: dict[str, str] = {}
    for item in items:
        if isinstance(item, (list, dict)):
            found.update(parse_sam_overrides(item))
            continue
        if not isinstance(item, str):
            raise ValueError(f"{item!r} is not KEY=VALUE text")
        if item.startswith("file://"):
            raise ValueError(f"{item!r} refers to a file: preprocess writes these parameters "
                             "itself, so give them inline (KEY=VALUE ...)")
        normalized = " " + item.strip()
        for pattern in (_SAM_LONG_PAIR, _SAM_PAIR):
            pairs = pattern.findall(normalized)
            if pairs:
                found.update(pairs)
                break
        else:
            raise ValueError(f"{item!r} holds no KEY=VALUE pair (SAM CLI refuses it)")
    return {_sam_unquote(k): _sam_unquote(v) for k, v in found.items()}


def sam_value_problem(value: str) -> str | None:
    """Why `value` cannot be written in parameter_overrides so that SAM CLI reads it back as
    itself, or None. SAM CLI has no escape for a backslash: a backslash before a space, a quote,
    a newline or at the end is read differently (or breaks the pairs that follow). And it looks
    for ParameterKey=K,ParameterValue=V anywhere in the string first, quotes or not."""
    if re.search(r"""\\(?=[ "'\n]|$)""", value):
        return ("SAM CLI's parameter_overrides cannot hold a backslash before a space, a quote, a "
                "newline, or at the end")
    if _SAM_LONG_PAIR.search(value):
        return ("SAM CLI would read its ParameterKey=...,ParameterValue=... as the other syntax of "
                "parameter_overrides, and then ignore every other parameter")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        return "it holds a lone surrogate (not Unicode text), which no TOML file can hold"
    return None


def sam_value(value: str) -> str:
    """`value` as SAM CLI reads it back in parameter_overrides: double-quoted, its quotes as \\"
    (SAM CLI unescapes those). Only for values sam_value_problem accepts."""
    return '"' + value.replace('"', '\\"') + '"'


def _toml_string(value: str) -> str:
    """`value` as a TOML basic string: backslash and quote escaped, and every control character
    (TOML forbids them raw), line or paragraph separator, and other invisible formatting
    character (so the file's lines stay its lines, and nothing invisible hides in it) as \\uXXXX."""
    out = []
    for c in value:
        if c in '"\\':
            out.append("\\" + c)
        elif c == "\t":
            out.append(c)
        elif unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp"):
            out.append(f"\\u{ord(c):04X}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08X}")
        elif 0xD800 <= ord(c) <= 0xDFFF:
            raise ValueError(f"{c!r} is not a Unicode scalar value: TOML cannot hold it")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'
