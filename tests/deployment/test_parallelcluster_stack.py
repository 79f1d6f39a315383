"""The ParallelCluster function's IAM grants what the cluster's real stack needs.

For each config of a small, realistic matrix, ParallelCluster's own code synthesizes the
cluster's stack offline (pcluster_stack.synthesize: pcluster.lib under moto, ~15 s each), and
every permission that stack's resources need (their CloudFormation schemas' create and delete
handlers) and every API call pcluster.lib made during create, status and delete is checked
against the policy the template gives ParallelClusterFunctionRole for that deployment. A
missing action fails the test naming it, the resource and why it is needed.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import yaml
from cfnlint.decode import cfn_yaml

from .iam import RolePolicy, role_policy
from .template import ACCOUNT
from .pcluster_stack import CLUSTER, synthesize
from .permissions import OPTIONAL, UNUSED, resource_schema, call_needs, refused, stack_needs

pytest.importorskip("pcluster.lib")

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "parallelcluster.yaml"
ROLE = "ParallelClusterFunctionRole"


def example() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def role(name: str) -> str:
    return f"arn:aws:iam::{ACCOUNT}:role/parallelcluster/{name}"


def with_roles(config: dict) -> dict:
    """Every role pcluster would otherwise create, named (base IAM mode)."""
    config = copy.deepcopy(config)
    config.setdefault("Iam", {}).setdefault("Roles", {})["LambdaFunctionsRole"] = role("stepcluster-lambda")
    config["HeadNode"].setdefault("Iam", {})["InstanceRole"] = role("stepcluster-head-node")
    for queue in config["Scheduling"]["SlurmQueues"]:
        queue.setdefault("Iam", {})["InstanceRole"] = role("stepcluster-compute")
    return config


def without_roles(config: dict) -> dict:
    config = copy.deepcopy(config)
    config.pop("Iam", None)
    config["HeadNode"].pop("Iam", None)
    for queue in config["Scheduling"]["SlurmQueues"]:
        queue.pop("Iam", None)
    return config


def alarms_off(config: dict) -> dict:
    config = copy.deepcopy(config)
    config["Monitoring"] = {"Alarms": {"Enabled": False}, "Dashboards": {"CloudWatch": {"Enabled": False}}}
    return config


def shared_storage(config: dict) -> dict:
    config = copy.deepcopy(config)
    config["SharedStorage"] = [
        {"MountDir": "/shared", "Name": "home", "StorageType": "Efs"},
        {"MountDir": "/scratch", "Name": "scratch", "StorageType": "FsxLustre",
         "FsxLustreSettings": {"StorageCapacity": 1200, "DeploymentType": "SCRATCH_2"}},
    ]
    return config


def two_queues(config: dict) -> dict:
    config = copy.deepcopy(config)
    first = config["Scheduling"]["SlurmQueues"][0]
    second = copy.deepcopy(first)
    second["Name"] = "spot"
    second["CapacityType"] = "SPOT"
    second["ComputeResources"] = [
        {"Name": "c5xlarge", "InstanceType": "c5.xlarge", "MinCount": 0, "MaxCount": 8},
        {"Name": "m5large", "InstanceType": "m5.large", "MinCount": 0, "MaxCount": 4},
    ]
    first.setdefault("Networking", {})["PlacementGroup"] = {"Enabled": True}
    config["Scheduling"]["SlurmQueues"].append(second)
    return config


# name -> (config, ParallelClusterIamMode the deployment needs for it)
MATRIX = {
    "shipped-example": (example, "base"),
    "roles-named": (lambda: with_roles(example()), "base"),
    "no-roles": (lambda: without_roles(example()), "privileged"),
    "alarms-off": (lambda: alarms_off(with_roles(example())), "base"),
    "efs-and-fsx": (lambda: shared_storage(with_roles(example())), "base"),
    "two-queues": (lambda: two_queues(with_roles(example())), "base"),
}


@pytest.fixture(scope="module")
def template():
    return json.loads(json.dumps(cfn_yaml.load(str(ROOT / "template.yaml"))))


_SYNTHESIZED: dict = {}


@pytest.fixture(scope="module", params=list(MATRIX))
def case(request):
    name = request.param
    if name not in _SYNTHESIZED:
        build, mode = MATRIX[name]
        _SYNTHESIZED[name] = (synthesize(build()), mode)
    return name, *_SYNTHESIZED[name]


def deployed(template, mode: str) -> RolePolicy:
    return role_policy(template, ROLE, {"ClusterBackend": "parallelcluster", "ParallelClusterIamMode": mode})


def test_the_stack_is_the_one_pcluster_builds_for_this_config(case):
    name, cluster, _ = case
    assert cluster.stack_tags["parallelcluster:cluster-name"] == CLUSTER
    assert cluster.stack_tags["stepcluster:execution"].endswith(":run-1")
    types = cluster.types()
    assert {"AWS::EC2::Instance", "AWS::DynamoDB::Table", "AWS::CloudFormation::Stack"} <= types
    if name == "alarms-off":
        assert "AWS::CloudWatch::CompositeAlarm" not in types
    else:
        assert "AWS::CloudWatch::CompositeAlarm" in types   # alarms are on by default
    if name == "efs-and-fsx":
        assert {"AWS::EFS::FileSystem", "AWS::FSx::FileSystem"} <= types
    if name == "two-queues":
        launch_templates = [r for _, _, r in cluster.resources() if r["Type"] == "AWS::EC2::LaunchTemplate"]
        assert len(launch_templates) == 1 + 3  # the head node's, one per compute resource


def test_every_instance_the_cluster_launches_carries_the_runs_tag(case):
    """A run's usage counts its cluster's instances by this tag (clusters.base.tagged_instances):
    the head node is tagged by the stack, compute nodes by their launch templates, which
    clustermgtd launches from long after the stack was created."""
    _, cluster, _ = case
    execution = cluster.stack_tags["stepcluster:execution"]

    def tags(pairs):
        return {t["Key"]: t["Value"] for t in pairs}

    head_nodes = [r for _, _, r in cluster.resources() if r["Type"] == "AWS::EC2::Instance"]
    compute = [r for _, name, r in cluster.resources()
               if r["Type"] == "AWS::EC2::LaunchTemplate" and not name.startswith("HeadNode")]
    assert head_nodes and compute
    for head in head_nodes:
        assert tags(head["Properties"]["Tags"])["stepcluster:execution"] == execution
    for template in compute:
        specs = template["Properties"]["LaunchTemplateData"]["TagSpecifications"]
        instance_tags = [tags(s["Tags"]) for s in specs if s["ResourceType"] == "instance"]
        assert instance_tags and all(t.get("stepcluster:execution") == execution for t in instance_tags)


def test_the_stack_creates_iam_roles_only_where_the_deployment_may(case):
    name, cluster, mode = case
    made = sorted(logical for _, logical, r in cluster.resources() if r["Type"] == "AWS::IAM::Role")
    if mode == "base":
        assert made == [], f"{name}: pcluster would create roles {made}, which base IAM mode cannot"
    else:
        assert made, f"{name}: expected a config that makes pcluster create roles"


def test_preprocess_refuses_in_base_mode_exactly_the_configs_whose_stack_makes_roles(case, tmp_path):
    """`stepcluster preprocess`'s reading of pcluster's rules against pcluster's own stack."""
    from stepcluster.clusters.parallelcluster_config import check_parallelcluster_config

    name, cluster, _ = case
    build, _ = MATRIX[name]
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(build()))
    made = {r["Type"] for _, _, r in cluster.resources()} & {"AWS::IAM::Role", "AWS::IAM::Policy"}
    refused_here = [p for p in check_parallelcluster_config(path, iam_mode="base") if p.severity == "error"]
    assert bool(refused_here) == bool(made), (name, made, [str(p) for p in refused_here])
    assert not [p for p in check_parallelcluster_config(path, iam_mode="privileged") if p.severity == "error"]


def test_the_function_may_create_and_delete_every_resource_of_the_stack(template, case):
    name, cluster, mode = case
    needs = stack_needs(cluster.resources(), cluster.stack_tags, CLUSTER).needs
    missing = refused(deployed(template, mode), needs)
    assert not missing, f"{name} ({mode} IAM): the cluster function may not\n  " + "\n  ".join(missing)


def test_the_function_may_make_every_call_pcluster_lib_makes(template, case):
    name, cluster, mode = case
    needs = [n for phase, calls in cluster.calls.items() for n in call_needs(calls, cluster.stack_tags, phase)]
    assert {"create", "status", "delete"} <= {n.why.split(":")[0] for n in needs}
    missing = refused(deployed(template, mode), needs)
    assert not missing, f"{name} ({mode} IAM): pcluster.lib's calls refused\n  " + "\n  ".join(missing)


def test_a_permission_removed_from_the_policy_is_named(template, case):
    """The check itself: take out PutCompositeAlarm and the composite alarm's need shows."""
    name, cluster, mode = case
    if "AWS::CloudWatch::CompositeAlarm" not in cluster.types():
        pytest.skip("no composite alarm in this stack")
    full = deployed(template, mode)
    policy = RolePolicy(full.role, [dataclasses.replace(
        s, actions=tuple(a for a in s.actions if a != "cloudwatch:PutCompositeAlarm")) for s in full.statements])
    missing = refused(policy, stack_needs(cluster.resources(), cluster.stack_tags, CLUSTER).needs)
    assert missing and all(m.startswith("cloudwatch:PutCompositeAlarm on ") for m in missing), missing


def test_permissions_are_excused_only_for_properties_the_schemas_have():
    """A misspelt property in OPTIONAL would excuse a permission for ever."""
    wrong = []
    for (kind, permission), path in OPTIONAL.items():
        schema = resource_schema(kind)
        if path.split("/")[0] not in schema.get("properties", {}):
            wrong.append(f"{kind}: {path} (for {permission})")
        handlers = schema.get("handlers") or {}
        if not any(permission in (handlers.get(p) or {}).get("permissions", []) for p in ("create", "delete")):
            wrong.append(f"{kind}: {permission} is not a create/delete permission of its schema")
    for kind, permission in UNUSED:
        handlers = resource_schema(kind).get("handlers") or {}
        if not any(permission in (handlers.get(p) or {}).get("permissions", []) for p in ("create", "delete")):
            wrong.append(f"{kind}: {permission} is not a create/delete permission of its schema")
    assert not wrong, wrong
