"""`run-local --parameter-overrides Key=Value ...`: the deployment's parameters, as `sam deploy`
takes them, for a local run.

Read from template.yaml itself: each parameter's type and constraints (AllowedValues,
MinValue/MaxValue, AllowedPattern) and the function environment variable it sets
(`STEPCLUSTER_X: !Ref Parameter`, which `Settings.from_env` reads). So a local run is set up as a
deployment would be, with the template's own checks, and a name the template does not have is
refused. Parameters that describe the AWS side (the backend, the head node's address, the VPC,
the ParallelCluster layer...) are run-local's to set from the local cluster, and are refused
with the option that sets them, if any.
"""

from __future__ import annotations

import re
from pathlib import Path

from stepcluster.errors import ConfigError, Problem

TEMPLATE = Path(__file__).resolve().parents[3] / "template.yaml"
#: Parameters the local run sets itself, and the option a user has instead.
SET_BY_RUN_LOCAL = {
    "ClusterBackend": "--backend", "StagingPath": "--staging", "Scheduler": "--scheduler",
    "HeadNodeHost": "the local cluster", "HeadNodePort": "the local cluster",
    "HeadNodeUser": "the local cluster", "HeadNodeHostKey": "the local cluster",
    "SshKeySecretArn": "the local cluster", "SshKeyName": "the local cluster",
    "JobsPlanDigest": "the config given", "JobSourceBucketArns": "the config given",
    "JobSourceObjectArns": "the config given",
}
WHERE = "--parameter-overrides"


def memory_sizes(template: Path = TEMPLATE) -> dict[str, int]:
    """{function: its MemorySize in MB} as the template gives them (the Globals' by default):
    what a local run counts each call's GB-seconds at."""
    doc = _template(template)
    default = ((doc.get("Globals") or {}).get("Function") or {}).get("MemorySize", 128)
    return {name: int((r.get("Properties") or {}).get("MemorySize", default))
            for name, r in (doc.get("Resources") or {}).items() if r.get("Type") == "AWS::Serverless::Function"}


def _template(path: Path) -> dict:
    import yaml

    class Loader(yaml.SafeLoader):
        """CloudFormation's short tags (!Ref, !Sub...) read as {"Ref": value}."""

    def tagged(loader, suffix, node):
        if isinstance(node, yaml.ScalarNode):
            value = loader.construct_scalar(node)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node)
        else:
            value = loader.construct_mapping(node)
        return {suffix: value}

    Loader.add_multi_constructor("!", tagged)
    return yaml.load(path.read_text(), Loader=Loader)


def settings_from_overrides(pairs: list[str], template: Path = TEMPLATE) -> dict[str, str]:
    """{Settings field: value} for `KEY=VALUE` pairs; ConfigError naming every bad one."""
    doc = _template(template)
    parameters = doc.get("Parameters") or {}
    environment = ((doc.get("Globals") or {}).get("Function") or {}).get("Environment", {}).get("Variables", {})
    setting_of = {value["Ref"]: name.removeprefix("STEPCLUSTER_").lower()
                  for name, value in environment.items()
                  if name.startswith("STEPCLUSTER_") and isinstance(value, dict) and "Ref" in value}
    problems, settings = [], {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        problem = None
        if not sep or not key:
            problem = f"{pair!r} is not KEY=VALUE"
        elif key not in parameters:
            from difflib import get_close_matches
            close = get_close_matches(key, parameters, n=1)
            problem = (f"the template has no parameter {key!r}" +
                       (f" (did you mean {close[0]!r}?)" if close else ""))
        elif key in SET_BY_RUN_LOCAL:
            problem = f"{key} is set by {SET_BY_RUN_LOCAL[key]} in a local run"
        elif key not in setting_of:
            problem = f"{key} does not apply to a local run (it configures AWS resources, not the functions)"
        else:
            problem = _constraint_problem(parameters[key], value)
        if problem:
            problems.append(Problem(WHERE, None, None, key if sep else None, problem))
        else:
            settings[setting_of[key]] = value
    if problems:
        raise ConfigError(problems)
    return settings


def _constraint_problem(spec: dict, value: str) -> str | None:
    """The template's own constraint the value breaks, as CloudFormation would refuse it."""
    allowed = spec.get("AllowedValues")
    if allowed is not None and value not in [str(a) for a in allowed]:
        return f"must be one of {', '.join(map(str, allowed))}, got {value!r}"
    if spec.get("Type") == "Number":
        if not re.fullmatch(r"-?\d{1,12}", value):
            return f"must be a whole number, got {value!r}"
        number = int(value)
        if "MinValue" in spec and number < spec["MinValue"]:
            return f"must be at least {spec['MinValue']}, got {number}"
        if "MaxValue" in spec and number > spec["MaxValue"]:
            return f"must be at most {spec['MaxValue']}, got {number}"
    pattern = spec.get("AllowedPattern")
    if pattern and not re.fullmatch(pattern, value):
        return f"{(spec.get('ConstraintDescription') or 'must match ' + pattern).rstrip('.')}, got {value!r}"
    return None
