"""The user's ParallelCluster 3 cluster configuration (YAML): load it, and check it offline.

`load_parallelcluster_config(path)` parses the file and applies stepcluster's own rules (no
pcluster needed: it runs in every Lambda); it raises ConfigError with every problem found.
`check_parallelcluster_config(path)` adds ParallelCluster's own schema (pcluster's marshmallow
`ClusterSchema`, the syntactic validation `pcluster create-cluster` starts with) and returns the
problems instead of raising. The schema's semantic validators (AMI lookup, subnets, key pair,
instance types...) need AWS and are left to create time.

Offline: `ClusterSchema.load` reads the region from the environment and builds a boto3 EC2
client (credentials are resolved when a client is built; without any, botocore would probe the
instance metadata service), and calls EC2 when the config names capacity reservations. For the
duration of the check, every AWS_* variable is replaced by a dummy region, dummy credentials, no
config files, no IMDS and an endpoint on 127.0.0.1 port 9 that refuses connections, so no AWS
call can leave the machine; the environment is restored afterwards and pcluster's cached clients
dropped. (Process-wide: do not run this concurrently with AWS calls in other threads.)

Our rules: Scheduling.Scheduler must be slurm (the adapter stepcluster drives); the tag key
stepcluster:execution is reserved (each run sets it to its execution ARN, and deletes only what
carries it). HeadNode.Ssh.KeyName may be omitted: the run adds its own key pair. ParallelCluster's
schema does not require it (HeadNodeSshSchema.key_name is optional in 3.16.1), so no placeholder
is injected before validating.

IAM (`role_creation_problems`, for the deployment's ParallelClusterIamMode): in AWS
ParallelCluster's "base" IAM access mode the cluster function cannot create IAM roles, so every
place where the config lets pcluster add one to the cluster's stack is refused, with its line.
The rules, from pcluster 3.16.1's template builder:

- Each node group (HeadNode, every Scheduling.SlurmQueues[] entry, every LoginNodes.Pools[]
  entry) gets an AWS::IAM::Role, its AWS::IAM::Policy documents and an AWS::IAM::InstanceProfile
  unless its Iam names InstanceProfile or InstanceRole (templates/cdk_builder_utils.py,
  NodeIamResourcesBase._add_role_and_policies; built by cluster_stack.py _add_iam_resources,
  queues_stack.py _add_compute_iam_resources, login_nodes_stack.py
  _add_login_node_iam_resources). A named InstanceProfile creates nothing; a named InstanceRole
  still gets a new InstanceProfile, under /parallelcluster/<cluster>/ (or under
  Iam.ResourcePrefix's path): the base policy may create instance profiles under
  /parallelcluster/ only. AdditionalIamPolicies and S3Access only ever go on a created role.
- Without Iam.Roles.LambdaFunctionsRole, the stack creates a role for its CleanupResources
  function (always present: cluster_stack.py _add_cleanup_resources_lambda,
  _condition_create_lambda_iam_role) and one for CleanupRoute53 (slurm_builder.py, with the
  cluster's DNS); an empty value counts as none.
- Iam.PermissionsBoundary applies only to roles pcluster creates (cdk_builder_utils.py
  apply_permissions_boundary): none in base mode.
- Named roles are passed to EC2 and Lambda: the deployment's iam:PassRole covers roles under
  /parallelcluster/ only, in either mode.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from stepcluster.clusters.base import EXECUTION_TAG
from stepcluster.config import Problem
from stepcluster.errors import ConfigError

MAX_BYTES = 1024 * 1024
#: The deployment's ParallelClusterIamMode values (template.yaml), AWS ParallelCluster's names.
IAM_MODES = ("base", "privileged")
#: Where pcluster puts what it creates, and the only path the deployment may pass roles from
#: (pcluster/constants.py IAM_ROLE_PATH; template.yaml IamPassRole, IamInstanceProfile).
IAM_PATH = "/parallelcluster/"
MAX_NODES = 100_000
CHECK_CLUSTER_NAME = "stepcluster-check"
_UNREACHABLE_ENDPOINT = "http://127.0.0.1:9"


def load_parallelcluster_config(path) -> dict:
    """The config as a dict; ConfigError holding every problem our own rules find."""
    config, root, problems = _parse(str(path))
    if config is not None:
        problems += _own_rules(str(path), config, _KeyLines(root))
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise ConfigError(problems)
    return config


def check_parallelcluster_config(path, iam_mode: str = "base") -> list[Problem]:
    """Every problem in the file: YAML, our rules, the IAM the deployment grants (`iam_mode`:
    ParallelClusterIamMode), and ParallelCluster's schema. Never raises."""
    path = str(path)
    try:
        from marshmallow import ValidationError  # noqa: F401
        from pcluster.schemas.cluster_schema import ClusterSchema  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - not installed, or a broken install
        return [Problem(path, None, None, None,
                        "cannot check this ParallelCluster configuration: the aws-parallelcluster "
                        f"package is not importable here ({type(exc).__name__}: {exc}); install "
                        "aws-parallelcluster==3.16.1 to check it")]
    config, root, problems = _parse(path)
    if config is None:
        return problems
    lines = _KeyLines(root)
    own = _own_rules(path, config, lines)
    taken = {p.key for p in own}
    iam = role_creation_problems(path, config, lines, iam_mode)
    schema = [p for p in _schema_problems(path, config, lines) if p.key not in taken]
    return problems + own + iam + schema


# ---------------------------------------------------------------------------- parsing
def _read(path: str) -> tuple[str | None, list[Problem]]:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return None, [Problem(path, None, None, None, f"cannot read the file: {exc.strerror or exc}")]
    if len(data) > MAX_BYTES:
        return None, [Problem(path, None, None, None, f"the file is larger than {MAX_BYTES} bytes")]
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return None, [Problem(path, None, None, None, f"not UTF-8 text (invalid byte at offset {exc.start})")]
    if "\x00" in text:
        return None, [Problem(path, None, None, None, "not a text file (NUL bytes)")]
    return text, []


def _loader(yaml):
    """PyYAML's safe loader with its own mapping constructor. pcluster.utils.yaml_load registers
    a constructor that raises on duplicate keys on yaml.SafeLoader itself, for the whole
    process, once pcluster has read a config; duplicates are ours to report, with their line."""
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("tag:yaml.org,2002:map", yaml.constructor.SafeConstructor.construct_yaml_map)
    return Loader


def _parse(path: str):
    """(config dict or None, YAML node tree, problems)."""
    text, problems = _read(path)
    if text is None:
        return None, None, problems
    try:
        import yaml
    except ImportError:
        return None, None, [Problem(path, None, None, None, "cannot read YAML: PyYAML is not installed")]
    try:
        loader = _loader(yaml)
        node = yaml.compose(text, Loader=loader)
        trouble = _alias_trouble(node)
        if trouble:
            return None, None, [Problem(path, None, None, None, trouble)]
        config = yaml.load(text, Loader=loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        what = " ".join(str(x) for x in (getattr(exc, "context", None), getattr(exc, "problem", None)) if x)
        return None, None, [Problem(path, mark.line + 1 if mark else None, None, None,
                                    f"not valid YAML: {what or exc}")]
    except Exception as exc:  # noqa: BLE001 - e.g. a constructor error on odd tags
        return None, None, [Problem(path, None, None, None, f"not valid YAML: {type(exc).__name__}: {exc}")]
    if config is None:
        return None, None, [Problem(path, None, None, None,
                                    "the file is empty: a ParallelCluster configuration is a YAML mapping "
                                    "with Image, HeadNode and Scheduling")]
    if not isinstance(config, dict):
        return None, None, [Problem(path, node.start_mark.line + 1 if node else None, None, None,
                                    f"a ParallelCluster configuration is a YAML mapping (Image, HeadNode, "
                                    f"Scheduling...), not a {type(config).__name__}")]
    problems += _duplicate_keys(path, node)
    return config, node, problems


def _alias_trouble(root) -> str | None:
    """YAML aliases may make a node contain itself, or expand a small file into a huge tree
    (every consumer, pcluster's schema included, walks the expanded tree)."""
    import yaml
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise ValueError("recursive")
        open_nodes.add(key)
        if isinstance(node, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total = 1 + sum(size(v) for v in node.value)
        else:
            total = 1
        open_nodes.discard(key)
        sizes[key] = total
        return total

    if root is None:
        return None
    try:
        total = size(root)
    except ValueError:
        return "a YAML alias refers to a node that contains it (a recursive structure)"
    if total > MAX_NODES:
        return f"the YAML expands to more than {MAX_NODES} values once its aliases are resolved"
    return None


def _duplicate_keys(path: str, root) -> list[Problem]:
    """YAML loaders keep the last of two equal keys silently; say so instead."""
    import yaml
    problems = []

    def walk(node, prefix):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, value_node in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
                here = _join(prefix, key) if key is not None else prefix
                if key is not None and key in seen:
                    problems.append(Problem(path, key_node.start_mark.line + 1, None, here,
                                            "duplicate key: only the last one would count"))
                seen.add(key)
                walk(value_node, here)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                walk(item, _join(prefix, index))

    if root is not None:
        walk(root, "")
    return problems


def _join(prefix: str, part) -> str:
    if isinstance(part, int) and prefix:
        return f"{prefix}[{part}]"
    return f"{prefix}.{part}" if prefix else str(part)


class _KeyLines:
    """Line numbers of key paths (HeadNode.Ssh.KeyName, Scheduling.SlurmQueues[0].Name)."""

    def __init__(self, root):
        self.root = root

    def line(self, parts) -> int | None:
        import yaml
        node, line = self.root, None
        for part in parts:
            if isinstance(node, yaml.MappingNode):
                match = next(((k, v) for k, v in node.value
                              if isinstance(k, yaml.ScalarNode) and k.value == str(part)), None)
                if match is None:
                    break
                line, node = match[0].start_mark.line + 1, match[1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                break
        return line


# ---------------------------------------------------------------------------- our rules
def _own_rules(path: str, config: dict, lines: _KeyLines) -> list[Problem]:
    problems = []

    def problem(parts, message):
        key = ""
        for part in parts:
            key = _join(key, part)
        problems.append(Problem(path, lines.line(parts), None, key, message))

    scheduling = config.get("Scheduling")
    if isinstance(scheduling, dict):
        scheduler = scheduling.get("Scheduler")
        if scheduler != "slurm":
            problem(["Scheduling", "Scheduler"],
                    "stepcluster runs ParallelCluster jobs through Slurm: Scheduler must be slurm"
                    + ("" if scheduler is None else f", not {scheduler!r}"))
    tags = config.get("Tags")
    if isinstance(tags, list):
        for index, tag in enumerate(tags):
            if isinstance(tag, dict) and tag.get("Key") == EXECUTION_TAG:
                problem(["Tags", index, "Key"],
                        f"the tag key {EXECUTION_TAG} is reserved: each run sets it to its "
                        f"execution, and deletes only clusters that carry it")
    return problems


# ---------------------------------------------------------------------------- IAM
_PRIVILEGED_FIX = ("or deploy with ParallelClusterIamMode=privileged "
                   "(stepcluster preprocess --parallelcluster-iam privileged)")


def role_creation_problems(path: str, config: dict, lines: "_KeyLines", iam_mode: str = "base") -> list[Problem]:
    """Each place where the config makes pcluster create IAM resources that the deployment's
    IAM mode cannot create, and each named role the deployment cannot pass (see the module
    docstring for pcluster's rules)."""
    problems = []

    def problem(parts, message, severity="error"):
        problems.append(Problem(path, lines.line(parts), None, _key(parts), message, severity))

    def mapping(value) -> dict:
        return value if isinstance(value, dict) else {}

    if iam_mode not in IAM_MODES:
        return [Problem(path, None, None, None, f"unknown ParallelCluster IAM mode {iam_mode!r}: "
                                                f"one of {', '.join(IAM_MODES)}")]
    base = iam_mode == "base"
    cluster_iam = mapping(config.get("Iam"))
    # Node groups, each with its own IAM resources in pcluster's stack: (key path, what it is).
    groups = []
    if isinstance(config.get("HeadNode"), dict):
        groups.append((["HeadNode"], "the head node"))
    for section, items, what in ((["Scheduling"], "SlurmQueues", "queue"), (["LoginNodes"], "Pools", "login nodes pool")):
        listed = mapping(config.get(section[0])).get(items)
        for index, item in enumerate(listed if isinstance(listed, list) else []):
            if isinstance(item, dict):
                name = item.get("Name")
                groups.append((section + [items, index], f"{what} {name!r}" if name else f"{what} {index}"))

    profiles_made = []   # groups with a named InstanceRole: pcluster adds an instance profile for it
    for parts, what in groups:
        node = config
        for part in parts:
            node = node[part]
        iam = mapping(node.get("Iam"))
        if iam.get("InstanceProfile"):
            continue
        role = iam.get("InstanceRole")
        if role:
            profiles_made.append(parts)
            _check_role_path(problem, parts + ["Iam", "InstanceRole"], role)
            continue
        if not base:
            continue
        key = _key(parts)
        extra = [k for k in ("AdditionalIamPolicies", "S3Access") if iam.get(k)]
        problem(parts + ["Iam"],
                f"no InstanceRole or InstanceProfile: pcluster would create an IAM role, its policies "
                f"and an instance profile for {what}, which the base IAM mode cannot: name a "
                f"pre-made role ({key}.Iam.InstanceRole: arn:aws:iam::ACCOUNT:role{IAM_PATH}NAME, "
                f"or InstanceProfile: arn:aws:iam::ACCOUNT:instance-profile{IAM_PATH}NAME"
                + (f"; put its {' and '.join(extra)} on that role instead" if extra else "")
                + f"), {_PRIVILEGED_FIX}")

    roles = mapping(cluster_iam.get("Roles"))
    lambda_role = roles.get("LambdaFunctionsRole")
    if lambda_role:
        _check_role_path(problem, ["Iam", "Roles", "LambdaFunctionsRole"], lambda_role)
    elif base:
        problem(["Iam", "Roles", "LambdaFunctionsRole"],
                "not set: pcluster would create IAM roles for the cluster's own Lambda functions "
                "(CleanupResources, CleanupRoute53), which the base IAM mode cannot: name a pre-made "
                "role that Lambda may assume (Iam: {Roles: "
                f"{{LambdaFunctionsRole: arn:aws:iam::ACCOUNT:role{IAM_PATH}NAME}}}}), {_PRIVILEGED_FIX}")

    prefix = cluster_iam.get("ResourcePrefix")
    prefix_path = _resource_prefix_path(prefix) if isinstance(prefix, str) else None
    if base and profiles_made and prefix_path and not prefix_path.startswith(IAM_PATH):
        problem(["Iam", "ResourcePrefix"],
                f"pcluster creates the instance profiles for the named InstanceRoles under "
                f"{prefix_path}<cluster>/, where the deployment's base IAM mode cannot create them "
                f"(only under {IAM_PATH}): start the prefix with {IAM_PATH}, name InstanceProfiles "
                f"instead of InstanceRoles, {_PRIVILEGED_FIX}")
    if base and cluster_iam.get("PermissionsBoundary"):
        problem(["Iam", "PermissionsBoundary"],
                "has no effect in the base IAM mode: it applies only to roles pcluster creates, and "
                "it creates none (put the boundary on your pre-made roles)", severity="warning")
    return problems


def _key(parts) -> str:
    key = ""
    for part in parts:
        key = _join(key, part)
    return key


def _check_role_path(problem, parts, arn) -> None:
    if not isinstance(arn, str) or f":role{IAM_PATH}" in arn:
        return
    problem(parts, f"the deployment may pass only roles under {IAM_PATH} to EC2 and Lambda "
                   f"(iam:PassRole on role{IAM_PATH}*): create the role with path {IAM_PATH} "
                   f"(arn:aws:iam::ACCOUNT:role{IAM_PATH}NAME), got {arn!r}")


def _resource_prefix_path(prefix: str) -> str | None:
    """The path part of Iam.ResourcePrefix, as pcluster splits it (pcluster/utils.py
    split_resource_prefix): up to its last "/", or None."""
    cut = prefix.rfind("/") + 1
    return prefix[:cut] if cut else None


# ---------------------------------------------------------------------------- pcluster's schema
@contextlib.contextmanager
def _offline_aws_env(region: str):
    saved = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    for k in saved:
        del os.environ[k]
    os.environ.update({
        "AWS_DEFAULT_REGION": region,
        "AWS_REGION": region,
        "AWS_ACCESS_KEY_ID": "stepcluster-offline-check",
        "AWS_SECRET_ACCESS_KEY": "stepcluster-offline-check",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ENDPOINT_URL": _UNREACHABLE_ENDPOINT,
        "AWS_MAX_ATTEMPTS": "1",
        "AWS_RETRY_MODE": "standard",
    })
    try:
        yield
    finally:
        for k in [k for k in os.environ if k.startswith("AWS_")]:
            del os.environ[k]
        os.environ.update(saved)
        _reset_pcluster_clients()


def _reset_pcluster_clients() -> None:
    """pcluster caches boto3 clients in a singleton: drop the ones built with dummy settings."""
    try:
        from pcluster.aws.aws_api import AWSApi
        AWSApi.reset()
    except Exception:  # noqa: BLE001
        pass


def _schema_problems(path: str, config: dict, lines: _KeyLines) -> list[Problem]:
    from marshmallow import ValidationError
    from pcluster.schemas.cluster_schema import ClusterSchema

    region = config.get("Region")
    if not (isinstance(region, str) and region.strip()):
        region = "us-east-1"  # any: the syntactic schema does not depend on it
    with _offline_aws_env(region):
        try:
            ClusterSchema(cluster_name=CHECK_CLUSTER_NAME).load(config)
            return []
        except ValidationError as exc:
            messages = exc.messages
        except Exception as exc:  # noqa: BLE001 - pcluster tripped over something odd
            return [Problem(path, None, None, None,
                            f"ParallelCluster could not validate this configuration: "
                            f"{type(exc).__name__}: {exc}")]
    problems = []
    for parts, message in _flatten(messages, []):
        key = ""
        for part in parts:
            key = _join(key, part)
        problems.append(Problem(path, lines.line(parts), None, key or None, message))
    problems.sort(key=lambda p: (p.line or 0, p.key or ""))
    return problems


def _flatten(messages, parts):
    """marshmallow's nested messages -> [(key path parts, message)]."""
    if isinstance(messages, dict):
        out = []
        for key, value in messages.items():
            out += _flatten(value, parts if key == "_schema" else parts + [key])
        return out
    if isinstance(messages, (list, tuple)):
        out = []
        for value in messages:
            out += _flatten(value, parts) if isinstance(value, (dict, list, tuple)) else [(parts, str(value))]
        return out
    return [(parts, str(messages))]
