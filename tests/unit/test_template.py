"""template.yaml and samconfig.toml: they agree with the definition, the code and each other.

The last tests run `sam validate --lint` and two `sam build`s (default parameters, and
ClusterBackend=parallelcluster) in parallel, about 20 s together, with the environment the
Makefile gives them: dummy credentials, a region, the venv's bin first on PATH.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from cfnlint.decode import cfn_yaml
from deployment.template import Resolver

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
DEFINITION = ROOT / "statemachine" / "definition.asl.json"
SAMCONFIG = ROOT / "samconfig.toml"
VENV_BIN = Path(sys.executable).parent

# The python3.11 functions sharing functions/ (logical id -> handler module).
SHARED_CODE_FUNCTIONS = {
    "ClusterFunction": "cluster",
    "PrepareHeadNodeFunction": "prepare_head_node",
    "SubmitJobsFunction": "submit_jobs",
    "PollJobsFunction": "poll_jobs",
    "CancelJobsFunction": "cancel_jobs",
    "ReleaseHeadNodeFunction": "release_head_node",
}
#: Outside the state machine: told when a run ends (exists when a notification is asked for).
NOTIFY_FUNCTIONS = {"NotifyFunction": "notify"}
FUNCTIONS = [*SHARED_CODE_FUNCTIONS, "ParallelClusterFunction", *NOTIFY_FUNCTIONS]
# The head node's work, over SSH; the cluster functions never SSH.
SSH_FUNCTIONS = {"PrepareHeadNodeFunction", "SubmitJobsFunction", "PollJobsFunction",
                 "CancelJobsFunction", "ReleaseHeadNodeFunction"}
# Cluster function -> the condition it exists under (exactly one exists per backend).
CLUSTER_FUNCTIONS = {"ClusterFunction": "UseClusterFunction",
                     "ParallelClusterFunction": "UseParallelCluster"}
BACKENDS = ["existing", "parallelcluster", "cfncluster"]
# The cluster tools' documented policies, attached only to the cluster function of their backend.
TOOL_POLICIES = {"CfnclusterPolicy": ("ClusterFunctionRole", "UseCfncluster"),
                 "ParallelClusterStackPolicy": ("ParallelClusterFunctionRole", "UseParallelCluster"),
                 "ParallelClusterResourcePolicy": ("ParallelClusterFunctionRole", "UseParallelCluster")}

# Wildcard actions: read only, as the cluster tools' documented user policies have them. Which
# actions remain on Resource "*", and why, is tests/deployment/test_iam_scope.py's (with AWS's
# own action data).
WILDCARD_ACTIONS = {"ec2:Describe*", "autoscaling:Describe*"}

# Resource type -> property that would fix its physical name.
NAME_PROPERTIES = {
    "AWS::Serverless::Function": "FunctionName",
    "AWS::Lambda::Function": "FunctionName",
    "AWS::Serverless::LayerVersion": "LayerName",
    "AWS::Lambda::LayerVersion": "LayerName",
    "AWS::Serverless::StateMachine": "Name",
    "AWS::StepFunctions::StateMachine": "StateMachineName",
    "AWS::Logs::LogGroup": "LogGroupName",
    "AWS::IAM::Role": "RoleName",
    "AWS::IAM::ManagedPolicy": "ManagedPolicyName",
    "AWS::Events::Rule": "Name",
}


def plain(node):
    """cfn-lint's YAML nodes as plain dicts/lists/strs (for ==, json.dumps and samtranslator)."""
    return json.loads(json.dumps(node))


@pytest.fixture(scope="module")
def template():
    return plain(cfn_yaml.load(str(TEMPLATE)))


@pytest.fixture(scope="module")
def transformed(template):
    """The template after the SAM transform: the IAM roles and policies CloudFormation sees."""
    from samtranslator.translator.transform import transform

    class NoManagedPolicies:  # the template names managed policies by ARN, never by name
        def load(self):
            return {}

    doc = json.loads(json.dumps(template))
    doc["Globals"]["Function"]["CodeUri"] = "s3://bucket/code.zip"
    for resource in doc["Resources"].values():
        for key in ("CodeUri", "ContentUri"):
            if key in resource.get("Properties", {}):
                resource["Properties"][key] = "s3://bucket/other.zip"
    doc["Resources"]["JobsStateMachine"]["Properties"]["DefinitionUri"] = "s3://bucket/definition.json"
    saved = os.environ.get("AWS_DEFAULT_REGION")
    os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
    try:
        return transform(doc, {}, NoManagedPolicies())
    finally:
        if saved is None:
            del os.environ["AWS_DEFAULT_REGION"]
        else:
            os.environ["AWS_DEFAULT_REGION"] = saved


@pytest.fixture(scope="module")
def samconfig():
    return tomllib.loads(SAMCONFIG.read_text())


def deploy_overrides(samconfig) -> dict[str, str]:
    from samcli.cli.types import CfnParameterOverridesType

    raw = samconfig["default"]["deploy"]["parameters"]["parameter_overrides"]
    return CfnParameterOverridesType().convert(raw, None, None)


def parameter_accepts(parameter: dict, value: str) -> bool:
    """What CloudFormation checks before creating anything (Java regex; these patterns are plain)."""
    items = value.split(",") if parameter["Type"] == "CommaDelimitedList" else [value]
    for item in items:
        if "AllowedValues" in parameter and item not in [str(v) for v in parameter["AllowedValues"]]:
            return False
        if "AllowedPattern" in parameter and not re.fullmatch(parameter["AllowedPattern"], item):
            return False
        if parameter["Type"] == "Number":
            if not re.fullmatch(r"-?\d+", item):
                return False
            if not parameter.get("MinValue", -1e18) <= int(item) <= parameter.get("MaxValue", 1e18):
                return False
    return True


def failed_rules(template, **given) -> list[str]:
    """The AssertDescriptions of the Rules that refuse these parameter values."""
    resolve = Resolver(template, given)
    failures = []
    for rule in template["Rules"].values():
        if "RuleCondition" in rule and not resolve.value(rule["RuleCondition"]):
            continue
        failures += [a["AssertDescription"] for a in rule["Assertions"] if not resolve.value(a["Assert"])]
    return failures


def conditions_for(template, **given) -> dict[str, bool]:
    resolve = Resolver(template, given)
    return {name: resolve.condition(name) for name in template["Conditions"]}


def resources_for(template, **given) -> set[str]:
    """The logical ids CloudFormation creates with these parameter values."""
    resolve = Resolver(template, given)
    return {name for name in template["Resources"] if resolve.exists(name)}


def walk(node, path=()):
    """Yield (path, node) for every dict and list in a template tree."""
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, path + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, path + (i,))


def statements(resource_tree):
    for path, node in walk(resource_tree):
        if isinstance(node, dict) and "Effect" in node and ("Action" in node or "NotAction" in node):
            yield path, node


def as_list(value):
    return value if isinstance(value, list) else [value]


def sub(value, stack="mystack", region="us-east-1", account="123456789012"):
    """A !Sub string with the pseudo parameters filled in (for matching ARNs)."""
    text = value["Fn::Sub"] if isinstance(value, dict) else value
    names = {"AWS::Partition": "aws", "AWS::Region": region, "AWS::AccountId": account,
             "AWS::StackName": stack}
    return re.sub(r"\$\{([^}]+)\}", lambda m: names[m[1]], text)


def unwrap_if(entry):
    """(condition, value) of an `!If [condition, value, !Ref AWS::NoValue]`, else (None, entry)."""
    if isinstance(entry, dict) and "Fn::If" in entry:
        condition, value, otherwise = entry["Fn::If"]
        assert otherwise == {"Ref": "AWS::NoValue"}, entry
        return condition, value
    return None, entry


def managed_policies(role) -> dict[str, str | None]:
    """The stack's managed policies a role has: logical id -> the condition attaching it."""
    found = {}
    for entry in role["Properties"].get("ManagedPolicyArns", []):
        condition, value = unwrap_if(entry)
        if isinstance(value, dict) and "Ref" in value:
            found[value["Ref"]] = condition
    return found


# --- the definition and the template ------------------------------------------------------------

def test_definition_placeholders_are_the_substitution_keys(template):
    text = DEFINITION.read_text()
    json.loads(text)  # placeholders sit inside JSON strings: the file is JSON before substitution
    placeholders = set(re.findall(r"\$\{([^}]*)\}", text))
    substitutions = template["Resources"]["JobsStateMachine"]["Properties"]["DefinitionSubstitutions"]
    assert placeholders == set(substitutions)


def test_substitutions_point_at_the_right_things(template):
    substitutions = template["Resources"]["JobsStateMachine"]["Properties"]["DefinitionSubstitutions"]
    expected = {f"{name}Arn": {"Fn::GetAtt": [name, "Arn"]} for name in SSH_FUNCTIONS}
    expected["ClusterFunctionArn"] = {"Fn::If": ["UseParallelCluster",
                                                 {"Fn::GetAtt": ["ParallelClusterFunction", "Arn"]},
                                                 {"Fn::GetAtt": ["ClusterFunction", "Arn"]}]}
    expected["JobsPlanDigest"] = {"Ref": "JobsPlanDigest"}
    assert substitutions == expected


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_backend_gets_exactly_one_cluster_function(template, backend):
    created = resources_for(template, ClusterBackend=backend)
    cluster_functions = created & set(CLUSTER_FUNCTIONS)
    expected = "ParallelClusterFunction" if backend == "parallelcluster" else "ClusterFunction"
    assert cluster_functions == {expected}
    assert SSH_FUNCTIONS <= created and "JobsStateMachine" in created
    # the layers exist exactly when the function that uses them does
    assert ("StepclusterLayer" in created) == (backend == "parallelcluster")
    assert ("CfnclusterLayer" in created) == (backend == "cfncluster")
    # what a cluster function needs exists with it (role, log group, tool policies)
    for function, condition in CLUSTER_FUNCTIONS.items():
        role, group = f"{function}Role", function.removesuffix("Function") + "LogGroup"
        for name in (function, role, group):
            assert template["Resources"][name]["Condition"] == condition, name
    assert ("RunResourcesPolicy" in created) == (backend != "existing")
    for policy, (_, condition) in TOOL_POLICIES.items():
        assert template["Resources"][policy]["Condition"] == condition
        assert (policy in created) == conditions_for(template, ClusterBackend=backend)[condition]


def task_states(states):
    for name, state in states.items():
        if state.get("Type") == "Task":
            yield name, state
        for branch in state.get("Branches", []):
            yield from task_states(branch["States"])
        for key in ("Iterator", "ItemProcessor"):
            if key in state:
                yield from task_states(state[key]["States"])


def test_no_task_gives_up_before_its_function_does(template):
    """A Task's TimeoutSeconds below the Lambda timeout would start the cleanup states while the
    function still works on the cluster (e.g. still submitting)."""
    default = template["Globals"]["Function"]["Timeout"]
    substitutions = template["Resources"]["JobsStateMachine"]["Properties"]["DefinitionSubstitutions"]
    definition = json.loads(DEFINITION.read_text())
    called = set()
    for name, state in task_states(definition["States"]):
        target = state.get("Parameters", {}).get("FunctionName", state["Resource"])
        match = re.fullmatch(r"\$\{(\w+Arn)\}(:\$LATEST)?", target)
        if not match:
            continue
        functions = [n[0] for _, n in walk(substitutions[match[1]])
                     if isinstance(n, list) and len(n) == 2 and n[1] == "Arn"]
        for function in functions:
            called.add(function)
            timeout = template["Resources"][function]["Properties"].get("Timeout", default)
            assert state.get("TimeoutSeconds", 0) >= timeout, f"{name}: TimeoutSeconds < {function} Timeout {timeout}"
    assert called == set(FUNCTIONS) - set(NOTIFY_FUNCTIONS)      # told by EventBridge, not a state


def test_state_machine_may_invoke_exactly_the_functions_that_exist(template):
    machine = template["Resources"]["JobsStateMachine"]["Properties"]
    assert machine["Type"] == "STANDARD"
    invoked = {}
    for entry in machine["Policies"]:
        condition, policy = unwrap_if(entry)
        if "LambdaInvokePolicy" in policy:
            invoked[policy["LambdaInvokePolicy"]["FunctionName"]["Ref"]] = condition
    assert invoked == {**{name: None for name in SSH_FUNCTIONS}, **CLUSTER_FUNCTIONS}
    logging = machine["Logging"]
    assert logging["IncludeExecutionData"] is True and logging["Level"] in ("ALL", "ERROR")


def test_python311_functions_share_one_code_folder_and_their_handlers_exist(template):
    glob = template["Globals"]["Function"]
    assert glob["CodeUri"] == "functions/" and glob["Runtime"] == "python3.11"
    functions = {k: v for k, v in template["Resources"].items() if v["Type"] == "AWS::Serverless::Function"}
    assert set(functions) == set(FUNCTIONS)
    for name, module in {**SHARED_CODE_FUNCTIONS, **NOTIFY_FUNCTIONS}.items():
        props = functions[name]["Properties"]
        assert "CodeUri" not in props and "Runtime" not in props, name
        assert props["Handler"] == f"handlers.{module}.handler"
        source = ROOT / "functions" / "handlers" / f"{module}.py"
        assert re.search(r"^def handler\(", source.read_text(), re.M), f"{source} has no handler()"


def test_run_local_serves_the_template_functions():
    """`stepcluster run-local` names the functions as the template does (ParallelClusterFunction
    runs the same handler, cluster.handler, as ClusterFunction)."""
    from stepcluster.local.lambda_endpoint import FUNCTIONS as LOCAL

    assert LOCAL == {name: f"handlers.{module}" for name, module in SHARED_CODE_FUNCTIONS.items()}


def test_parallelcluster_function_runs_on_the_layers_python_with_both_layers(template):
    props = template["Resources"]["ParallelClusterFunction"]["Properties"]
    assert props["Runtime"] == "python3.12" and props["MemorySize"] >= 1024
    assert props["CodeUri"] == "functions/handlers/" and props["Handler"] == "cluster.handler"
    # `sam build` looks for a python3.12 binary (absent here) only to install requirements
    assert not (ROOT / "functions" / "handlers" / "requirements.txt").exists()
    # the override when given, else the layer the stack publishes; then the project's own
    assert props["Layers"] == [
        {"Fn::If": ["HasParallelClusterLayer", {"Ref": "ParallelClusterLayerArn"}, {"Ref": "ParallelClusterLayer"}]},
        {"Ref": "StepclusterLayer"}]
    published = template["Resources"]["ParallelClusterLayer"]["Properties"]
    assert published["CompatibleRuntimes"] == [props["Runtime"]]
    assert published["CompatibleArchitectures"] == template["Globals"]["Function"]["Architectures"]
    layer = template["Resources"]["StepclusterLayer"]
    assert layer["Properties"]["CompatibleRuntimes"] == [props["Runtime"]]
    assert layer["Properties"]["ContentUri"] == "functions/"
    assert layer["Metadata"]["BuildMethod"] == "makefile"
    makefile = ROOT / layer["Metadata"]["ContextPath"] / "Makefile"
    assert re.search(r"^build-StepclusterLayer:", makefile.read_text(), re.M)


def function_layers(template, **given) -> list:
    """The ParallelCluster function's Layers as CloudFormation resolves them for these values."""
    conditions = conditions_for(template, **given)
    resolved = []
    for entry in template["Resources"]["ParallelClusterFunction"]["Properties"]["Layers"]:
        if "Fn::If" in entry:
            condition, yes, no = entry["Fn::If"]
            entry = yes if conditions[condition] else no
        resolved.append(entry)
    return resolved


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-1"])
@pytest.mark.parametrize("version", ["3.16.1", "3.13.2"])
def test_the_parallelcluster_layer_is_the_versions_public_zip_in_the_regions_bucket(template, region, version):
    """As AWS's own templates publish it (api/infrastructure/parallelcluster-api.yaml):
    s3://REGION-aws-parallelcluster/parallelcluster/VERSION/layers/aws-parallelcluster/lambda-layer.zip."""
    layer = template["Resources"]["ParallelClusterLayer"]
    assert layer["Type"] == "AWS::Lambda::LayerVersion" and layer["Condition"] == "PublishParallelClusterLayer"
    content = layer["Properties"]["Content"]
    assert set(content) == {"S3Bucket", "S3Key"}
    bucket = sub(content["S3Bucket"], region=region)
    key = sub(content["S3Key"]["Fn::Sub"].replace("${ParallelClusterVersion}", version), region=region)
    assert (bucket, key) == (f"{region}-aws-parallelcluster",
                             f"parallelcluster/{version}/layers/aws-parallelcluster/lambda-layer.zip")
    assert "${ParallelClusterVersion}" in layer["Properties"]["Description"]["Fn::Sub"]
    # AWS's bucket and key only: nothing of this stack (Lambda reads it with the deployer's
    # credentials, so no role of the template is involved)
    assert set(re.findall(r"\$\{([^}]+)\}", json.dumps(content))) == {"AWS::Region", "ParallelClusterVersion"}


def test_the_layer_arn_overrides_the_published_layer(template):
    published = resources_for(template, ClusterBackend="parallelcluster")
    assert "ParallelClusterLayer" in published
    assert function_layers(template, ClusterBackend="parallelcluster")[0] == {"Ref": "ParallelClusterLayer"}
    overridden = resources_for(template, ClusterBackend="parallelcluster", **LAYER)
    assert "ParallelClusterLayer" not in overridden and "StepclusterLayer" in overridden
    assert function_layers(template, ClusterBackend="parallelcluster", **LAYER) == [
        {"Ref": "ParallelClusterLayerArn"}, {"Ref": "StepclusterLayer"}]
    for backend in ("existing", "cfncluster"):  # no ParallelCluster function, no layer
        assert "ParallelClusterLayer" not in resources_for(template, ClusterBackend=backend)
        assert "ParallelClusterLayer" not in resources_for(template, ClusterBackend=backend, **LAYER)


def test_parallelcluster_versions_are_the_ones_the_code_lists(template):
    """One list: the template offers what the function accepts at run time, and its default is
    the aws-parallelcluster installed (and tested) here."""
    from importlib.metadata import version

    from stepcluster.clusters.parallelcluster import PARALLELCLUSTER_VERSIONS

    parameter = template["Parameters"]["ParallelClusterVersion"]
    assert parameter["AllowedValues"] == list(PARALLELCLUSTER_VERSIONS)
    assert parameter["Default"] == version("aws-parallelcluster") == PARALLELCLUSTER_VERSIONS[-1]
    assert all(isinstance(v, str) for v in parameter["AllowedValues"])
    assert sorted(PARALLELCLUSTER_VERSIONS, key=lambda v: tuple(map(int, v.split(".")))) == list(PARALLELCLUSTER_VERSIONS)


def test_cfncluster_layer_is_attached_only_for_cfncluster(template):
    props = template["Resources"]["ClusterFunction"]["Properties"]
    # SshLayer: cryptography makes the run's key, paramiko cleans up on an existing head node
    assert [unwrap_if(layer) for layer in props["Layers"]] == [("UseCfncluster", {"Ref": "CfnclusterLayer"}),
                                                               (None, {"Ref": "SshLayer"})]
    layer = template["Resources"]["CfnclusterLayer"]
    assert layer["Condition"] == "UseCfncluster" and layer["Metadata"]["BuildMethod"] == "python3.11"
    requirements = (ROOT / layer["Properties"]["ContentUri"] / "requirements.txt").read_text().split()
    assert "cfncluster==1.6.1" in requirements and "setuptools<82" in requirements


def test_environment_matches_what_the_code_reads(template):
    from stepcluster.settings import Settings

    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    read = {f"STEPCLUSTER_{f.name.upper()}" for f in dataclasses.fields(Settings)}
    # Lambda sets AWS_REGION, which Settings falls back to; the cluster functions alone get the
    # release function (a global one would make that function depend on itself); how many jobs
    # a record carries is the code's bound (tests and the benchmark lower it), not a parameter
    assert set(variables) == read - {"STEPCLUSTER_REGION", "STEPCLUSTER_RELEASE_FUNCTION",
                                     "STEPCLUSTER_JOBS_IN_RECORD", "STEPCLUSTER_NOTIFY_TOPIC_ARN"} | {"LOG_LEVEL"}
    for function in ("ClusterFunction", "ParallelClusterFunction"):
        own = template["Resources"][function]["Properties"]["Environment"]["Variables"]
        assert own == {"STEPCLUSTER_RELEASE_FUNCTION": {"Ref": "ReleaseHeadNodeFunction"}}
    assert variables.pop("STEPCLUSTER_RESOURCE_PREFIX") == {"Fn::Sub": "stepcluster/${AWS::StackName}"}
    assert variables.pop("STEPCLUSTER_ARTIFACTS_BUCKET") == {"Ref": "ArtifactsBucket"}
    for value in variables.values():  # every other value comes from a parameter
        assert set(value) == {"Ref"} and value["Ref"] in template["Parameters"]


def test_results_go_to_the_stacks_own_bucket_written_only_by_the_functions_that_keep_them(transformed):
    resources = transformed["Resources"]
    bucket = resources["ArtifactsBucket"]
    assert bucket["DeletionPolicy"] == "Retain" and "BucketName" not in bucket["Properties"]
    assert all(bucket["Properties"]["PublicAccessBlockConfiguration"].values())
    writers = {path[0]: json.dumps(s["Resource"]) for path, s in statements(resources)
               if "s3:PutObject" in as_list(s["Action"]) and "ArtifactsBucket" in json.dumps(s["Resource"])}
    assert set(writers) == {"JobResultsPolicy", "JobStagingPolicy", "JobTablePolicy"}
    # a wide run's job records: only below a run's .jobs/ (no job's results are there)
    assert writers["JobTablePolicy"] == json.dumps({"Fn::Sub": "${ArtifactsBucket.Arn}/*/.jobs/*"})
    holders = {name: r["Properties"]["ManagedPolicyArns"] for name, r in resources.items()
               if r["Type"] == "AWS::IAM::Role" and "JobResultsPolicy" in json.dumps(r["Properties"].get("ManagedPolicyArns"))}
    # the polling round that sees a job end, the release, and for an existing head node the
    # cluster function (its abort cleanup releases the run)
    assert set(holders) == {"PollJobsFunctionRole", "ReleaseHeadNodeFunctionRole", "ClusterFunctionRole"}
    assert {"Fn::If": ["UseExistingHeadNode", {"Ref": "JobResultsPolicy"}, {"Ref": "AWS::NoValue"}]} \
        in holders["ClusterFunctionRole"]
    # staging only shares local_path packages, and only for head-node staging
    assert "/packages/*" in writers["JobStagingPolicy"]


def test_parameters_are_described_grouped_and_their_defaults_valid(template):
    groups = template["Metadata"]["AWS::CloudFormation::Interface"]["ParameterGroups"]
    grouped = [name for group in groups for name in group["Parameters"]]
    assert sorted(grouped) == sorted(template["Parameters"]), "each parameter in exactly one group"
    for name, parameter in template["Parameters"].items():
        assert len(parameter.get("Description", "")) > 20, f"{name} needs a Description"
        if "AllowedPattern" in parameter:
            assert parameter.get("ConstraintDescription"), f"{name} needs a ConstraintDescription"
        if "Default" in parameter:
            assert parameter_accepts(parameter, str(parameter["Default"])), name
    assert template["Parameters"]["ClusterBackend"]["AllowedValues"] == BACKENDS


@pytest.mark.parametrize("name, good, bad", [
    ("SshKeySecretArn",
     ["", "arn:aws:secretsmanager:eu-west-1:123456789012:secret:stepcluster/hpc-key-AbC123"],
     ["arn:aws:secretsmanager:eu-west-1:123456789012:secret:stepcluster/hpc-key",  # partial ARN
      "stepcluster/hpc-key", "REPLACE_ME"]),
    ("HeadNodeHostKey",
     ["", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGb0cJ1dLvh6gI+Ixk2Ju4GqzN7sY0v0s2y1aBkKo7fT",
      "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTY= root@head",
      "head.example.org ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGb0cJ1dLvh6gI+Ixk2Ju4GqzN7sY0v0s2y1aBkKo7fT",
      "[10.0.0.5]:2222 ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ==",
      "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s"],
     ["256 SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s root@head (ED25519)",
      "MD5:aa:bb", "ssh-dss AAAAB3NzaC1kc3M=", "REPLACE_ME"]),
    ("HeadNodeHost", ["", "head.example.org", "10.0.1.23", "fd00::23"], ["REPLACE_ME", "-x", "a b"]),
    ("HeadNodeUser", ["", "ec2-user", "hpc"], ["REPLACE_ME", "root; rm"]),
    ("Scheduler", ["", "slurm", "sge", "torque"], ["pbs", "SLURM"]),
    ("ParallelClusterVersion", ["3.16.1", "3.11.1", "3.14.2"],
     ["3.16.2", "3.10.1", "3.11.0", "", "latest", "3.16"]),
    ("ParallelClusterLayerArn",
     ["", "arn:aws:lambda:us-east-1:123456789012:layer:pcluster:1"],
     ["arn:aws:lambda:us-east-1:123456789012:layer:pcluster",  # no version
      "arn:aws:lambda:us-east-1:123456789012:function:pcluster", "pcluster"]),
    ("SshKeyName", ["", "my-key", "team_key.2024"], ["-key", "a b", "x" * 256]),
    ("ClusterCreateTimeoutSeconds", ["3600", "300", "86400"], ["60", "60m", "100000"]),
    ("UsePublicAddress", ["true", "false"], ["yes", ""]),
    ("ParallelClusterIamMode", ["base", "privileged"], ["", "Base", "admin"]),
    ("JobsPlanDigest", ["none", "0123456789abcdef0123456789abcdef"], ['a"b', "", "a b"]),
    ("JobSourceBucketArns", ["", "arn:aws:s3:::my-bucket,arn:aws:s3:::other.bucket"],
     ["s3://my-bucket", "arn:aws:s3:::my-bucket/key"]),
    ("JobSourceObjectArns", ["", "arn:aws:s3:::my-bucket/inputs/*,arn:aws:s3:::bkt/*",
                             "arn:aws:s3:::bkt/${*}*,arn:aws:s3:::bkt/a${?}c/*,arn:aws:s3:::bkt/${$}x*"],
     ["arn:aws:s3:::my-bucket", "my-bucket/inputs/*"]),
    ("VpcSubnetIds", ["", "subnet-0123abcd,subnet-4567ef01"], ["sg-0123abcd"]),
    ("VpcSecurityGroupIds", ["", "sg-0123abcd"], ["subnet-0123abcd"]),
    ("RemoteWorkRoot", ["stepcluster-runs", "work/runs", "a.b/c"],
     ["/abs", "../up", "a/../b", "./a", ".hidden", "-rf", "a b", "a/", ""]),
])
def test_parameter_patterns(template, name, good, bad):
    parameter = template["Parameters"][name]
    for value in good:
        assert parameter_accepts(parameter, value), value
    for value in bad:
        assert not parameter_accepts(parameter, value), value


EXISTING = {"HeadNodeHost": "head.example.org", "HeadNodeUser": "hpc", "Scheduler": "slurm",
            "HeadNodeHostKey": "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s",
            "SshKeySecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:hpc-key-AbC123"}
LAYER = {"ParallelClusterLayerArn": "arn:aws:lambda:us-east-1:123456789012:layer:pcluster:1"}
PUBLIC = {"UsePublicAddress": "true"}
VPC = {"VpcSubnetIds": "subnet-0123abcd,subnet-4567ef01", "VpcSecurityGroupIds": "sg-0123abcd"}
UNREACHABLE = "is reached by its head node's private address"


@pytest.mark.parametrize("given, refused", [
    ({"ClusterBackend": "existing", **EXISTING}, []),
    *[({"ClusterBackend": "existing", **{k: v for k, v in EXISTING.items() if k != missing}}, [missing])
      for missing in EXISTING],
    ({"ClusterBackend": "parallelcluster", **PUBLIC}, []),  # the stack publishes the layer
    ({"ClusterBackend": "parallelcluster", **LAYER, **PUBLIC}, []),
    ({"ClusterBackend": "parallelcluster", **LAYER, **VPC}, []),
    ({"ClusterBackend": "cfncluster", **PUBLIC}, []),
    ({"ClusterBackend": "cfncluster", **VPC}, []),
    # a created cluster reached by its private address from outside any VPC: never connects
    ({"ClusterBackend": "parallelcluster", **LAYER}, [UNREACHABLE]),
    ({"ClusterBackend": "cfncluster"}, [UNREACHABLE]),
    ({"ClusterBackend": "cfncluster", "UsePublicAddress": "false", "VpcSubnetIds": "subnet-0123abcd"},
     ["or leave both empty", UNREACHABLE]),
    ({"ClusterBackend": "cfncluster", **PUBLIC, "VpcSecurityGroupIds": "sg-0123abcd"}, ["or leave both empty"]),
    # an existing head node is reached at HeadNodeHost, whatever UsePublicAddress says
    ({"ClusterBackend": "existing", **EXISTING, "UsePublicAddress": "false"}, []),
    ({"ClusterBackend": "cfncluster", **PUBLIC, "SshKeyName": "team-key"}, ["SshKeyName and SshKeySecretArn"]),
    ({"ClusterBackend": "cfncluster", **VPC, "SshKeySecretArn": EXISTING["SshKeySecretArn"]},
     ["SshKeyName and SshKeySecretArn"]),
    ({"ClusterBackend": "parallelcluster", **LAYER, **PUBLIC, "SshKeyName": "team-key",
      "SshKeySecretArn": EXISTING["SshKeySecretArn"]}, []),
])
def test_rules_refuse_what_a_backend_cannot_run_with(template, given, refused):
    """Rules, evaluated here on parameter values: neither cfn-lint (its --parameters checks
    AllowedValues only; it reads Rules only to prune condition scenarios) nor the SAM translator
    or CLI evaluates Rules' assertions, so CloudFormation's own check is reproduced."""
    failures = failed_rules(template, **given)
    assert len(failures) == len(refused), failures
    for failure, what in zip(failures, refused):
        assert what in failure, (what, failure)


def test_the_unreachable_rule_says_the_fix(template):
    (failure,) = failed_rules(template, ClusterBackend="cfncluster")
    assert "set VpcSubnetIds and VpcSecurityGroupIds" in failure and 'UsePublicAddress to "true"' in failure


# --- permissions --------------------------------------------------------------------------------

def test_no_wildcard_actions_but_read_only_ones(transformed):
    found = list(statements(transformed["Resources"]))
    assert len(found) > 20
    for path, statement in found:
        assert "NotAction" not in statement and "NotResource" not in statement, path
        for action in as_list(statement["Action"]):
            assert isinstance(action, str), path
            assert action != "*" and not action.endswith(":*"), (path, action)
            assert "*" not in action or action in WILDCARD_ACTIONS, (path, action)


def test_each_star_resource_says_why(template):
    """Every `Resource: "*"` in template.yaml follows a comment that mentions "*"."""
    lines = TEMPLATE.read_text().splitlines()
    stars = [i for i, line in enumerate(lines) if re.fullmatch(r'\s*Resource: "\*"', line)]
    assert stars
    for i in stars:
        j = max(j for j in range(i) if re.match(r"\s*- (Sid|Effect):", lines[j])) - 1
        while re.fullmatch(r"\s*(- )?Statement:", lines[j]):
            j -= 1
        comment = []
        while lines[j].strip().startswith("#"):
            comment.append(lines[j])
            j -= 1
        assert '"*"' in " ".join(comment), f"template.yaml line {i + 1}: no comment says why \"*\""


def test_ssh_keys_readable_only_by_the_functions_that_ssh(transformed):
    resources = transformed["Resources"]
    policy = resources["SshKeyReadPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert [unwrap_if(s) for s in policy] == [
        ("HasSshKeySecret", {"Sid": "ReadUserSshKey", "Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
                             "Resource": {"Ref": "SshKeySecretArn"}}),
        (None, {"Sid": "ReadRunSshKeys", "Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
                "Resource": {"Fn::Sub": "arn:${AWS::Partition}:secretsmanager:${AWS::Region}:${AWS::AccountId}"
                                        ":secret:stepcluster/${AWS::StackName}/*"}}),
    ]
    readers = {name for name in FUNCTIONS if "SshKeyReadPolicy" in managed_policies(resources[f"{name}Role"])}
    # ...and the cluster function of an existing head node, whose abort cleanup logs in to it
    assert readers == SSH_FUNCTIONS | {"ClusterFunction"}
    for name in SSH_FUNCTIONS:
        assert managed_policies(resources[f"{name}Role"])["SshKeyReadPolicy"] is None
    assert managed_policies(resources["ClusterFunctionRole"])["SshKeyReadPolicy"] == "UseExistingHeadNode"
    getters = [path[0] for path, s in statements(resources) if "secretsmanager:GetSecretValue" in as_list(s["Action"])]
    assert set(getters) == {"SshKeyReadPolicy"}


def test_run_key_names_fall_under_the_iam_scopes(transformed):
    """keys.py names each run's key pair and secret after STEPCLUSTER_RESOURCE_PREFIX; the
    statements that create, delete and read them are scoped to exactly those names."""
    from stepcluster.keys import RunKeys

    key_pair, secret = RunKeys(prefix="stepcluster/mystack").names("exec-1")
    # a stack whose name starts with this one's ("mystack-b"): its keys are out of scope too
    other_key_pair, other_secret = RunKeys(prefix="stepcluster/mystack-b").names("exec-1")
    secret_arn = f"arn:aws:secretsmanager:us-east-1:123456789012:secret:{secret}-AbC123"
    key_pair_arn = f"arn:aws:ec2:us-east-1:123456789012:key-pair/{key_pair}"
    resources = transformed["Resources"]
    read = resources["SshKeyReadPolicy"]["Properties"]["PolicyDocument"]["Statement"][1]["Resource"]
    assert fnmatch.fnmatchcase(secret_arn, sub(read))
    assert not fnmatch.fnmatchcase(secret_arn.replace(secret, other_secret), sub(read))
    run = {s["Sid"]: s for s in resources["RunResourcesPolicy"]["Properties"]["PolicyDocument"]["Statement"]}
    assert set(run["RunKeySecrets"]["Action"]) == {"secretsmanager:CreateSecret", "secretsmanager:DescribeSecret",
                                                   "secretsmanager:DeleteSecret", "secretsmanager:TagResource"}
    assert fnmatch.fnmatchcase(secret_arn, sub(run["RunKeySecrets"]["Resource"]))
    for sid in ("RunKeyPairs", "TagRunKeyPairsOnImport"):
        assert fnmatch.fnmatchcase(key_pair_arn, sub(run[sid]["Resource"])), sid
        assert not fnmatch.fnmatchcase(key_pair_arn.replace(key_pair, other_key_pair), sub(run[sid]["Resource"]))
    assert set(run["RunKeyPairs"]["Action"]) == {"ec2:ImportKeyPair", "ec2:DeleteKeyPair"}
    assert run["TagRunKeyPairsOnImport"]["Condition"] == {"StringEquals": {"ec2:CreateAction": "ImportKeyPair"}}
    ownership = {s["Sid"]: s for s in resources["ClusterOwnershipPolicy"]["Properties"]["PolicyDocument"]["Statement"]}
    console = ownership["ReadRunHeadNodeConsole"]
    assert console["Action"] == "ec2:GetConsoleOutput" and "aws:ResourceTag/stepcluster:execution" in json.dumps(console)
    # the per-run resources belong to the cluster function of a backend that creates clusters
    attached = {name: managed_policies(resources[f"{name}Role"]).get("RunResourcesPolicy", "-") for name in FUNCTIONS}
    assert attached == {**{name: "-" for name in SSH_FUNCTIONS}, "NotifyFunction": "-",
                        "ClusterFunction": "UseCfncluster", "ParallelClusterFunction": None}


def test_tool_policies_only_on_their_backends_cluster_function(transformed):
    resources = transformed["Resources"]
    for policy, (role, condition) in TOOL_POLICIES.items():
        holders = {name: managed_policies(r)[policy] for name, r in resources.items()
                   if r["Type"] == "AWS::IAM::Role" and policy in managed_policies(r)}
        expected = None if resources[role]["Condition"] == condition else condition
        assert holders == {role: expected}, policy
    cfncluster = json.dumps(resources["CfnclusterPolicy"]["Properties"]["PolicyDocument"])
    assert "stack/cfncluster-*/*" in cfncluster and "role/cfncluster-*" in cfncluster
    parallelcluster = json.dumps([resources[p]["Properties"]["PolicyDocument"] for p in TOOL_POLICIES
                                  if p.startswith("ParallelCluster")])
    assert "role/parallelcluster/*" in parallelcluster and "iam:CreateRole" not in parallelcluster


def test_s3_job_sources_readable_only_by_the_staging_functions_and_only_when_given(transformed):
    resources = transformed["Resources"]
    s3 = [(path, s) for path, s in statements(resources)
          if path[0] not in TOOL_POLICIES and any(a.startswith("s3:") for a in as_list(s["Action"]))
          and "ArtifactsBucket" not in json.dumps(s["Resource"])]
    assert {(s["Action"], json.dumps(s["Resource"])) for _, s in s3} == {
        ("s3:ListBucket", json.dumps({"Ref": "JobSourceBucketArns"})),
        ("s3:GetObject", json.dumps({"Ref": "JobSourceObjectArns"})),
    }
    assert {path[0] for path, _ in s3} == {"JobStagingPolicy"}
    statements_ = resources["JobStagingPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    conditional = {s["Fn::If"][1]["Sid"]: s["Fn::If"][0] for s in statements_ if "Fn::If" in s}
    assert conditional == {"ListJobSourceBuckets": "HasJobSourceBuckets",
                           "ReadJobSourceObjects": "HasJobSourceObjects",
                           "ShareJobPackages": "StageFromHeadNode"}
    holders = {name for name, r in resources.items() if r["Type"] == "AWS::IAM::Role"
               and "JobStagingPolicy" in managed_policies(r)}
    assert holders == {"SubmitJobsFunctionRole", "PollJobsFunctionRole"}


VPC_POLICY = "service-role/AWSLambdaVPCAccessExecutionRole"


def vpc_condition(resource: dict) -> str | None:
    """The condition under which a function runs in the VPC (None: never)."""
    config = resource["Properties"].get("VpcConfig")
    if config is None:
        return None
    condition, value = unwrap_if(config)
    assert condition and value == {"SubnetIds": {"Ref": "VpcSubnetIds"},
                                   "SecurityGroupIds": {"Ref": "VpcSecurityGroupIds"}}, config
    return condition


def vpc_policy_conditions(resource_tree) -> list:
    """The conditions attaching AWSLambdaVPCAccessExecutionRole in a tree (None: unconditional)."""
    found = []
    for path, node in walk(resource_tree):
        if isinstance(node, str) and VPC_POLICY in node:
            if "Fn::If" not in path:
                found.append(None)
                continue
            if_at = max(i for i, key in enumerate(path) if key == "Fn::If")
            owner = resource_tree
            for key in path[:if_at]:
                owner = owner[key]
            assert path[if_at + 1] == 1, path      # the "true" branch of the !If
            found.append(owner["Fn::If"][0])
    return found


def test_only_the_functions_that_ssh_run_in_the_vpc(template, transformed):
    """The head node's functions run in the VPC (when one is given); the cluster function only
    for an existing head node (its abort cleanup SSHes there); creating a cluster calls AWS APIs
    only (IAM and Route 53 have no VPC endpoints), so those functions stay outside."""
    assert "VpcConfig" not in template["Globals"]["Function"]
    resources = transformed["Resources"]
    conditions = {name: vpc_condition(resources[name]) for name in FUNCTIONS}
    assert conditions == {**{name: "UseVpc" for name in SSH_FUNCTIONS}, "NotifyFunction": None,
                          "ClusterFunction": "ClusterFunctionInVpc", "ParallelClusterFunction": None}
    for backend in BACKENDS:
        for network in ({}, VPC):
            truth = conditions_for(template, ClusterBackend=backend, **network)
            in_vpc = {name for name, c in conditions.items() if c and truth[c]}
            expected = set(SSH_FUNCTIONS) | ({"ClusterFunction"} if backend == "existing" else set())
            assert in_vpc == (expected if network else set()), (backend, network)


def test_vpc_access_only_for_the_roles_of_functions_in_the_vpc(transformed):
    """AWSLambdaVPCAccessExecutionRole (ENI rights on "*") is attached to a function's role under
    exactly the condition that puts the function in the VPC, and nowhere else (SAM's generated
    roles would add it unconditionally)."""
    resources = transformed["Resources"]
    holders = {name: vpc_policy_conditions(r) for name, r in resources.items() if vpc_policy_conditions(r)}
    assert holders == {f"{name}Role": [vpc_condition(resources[name])] for name in FUNCTIONS
                       if vpc_condition(resources[name])}


def test_each_function_writes_only_its_own_log_group(transformed):
    resources = transformed["Resources"]
    for name in FUNCTIONS:
        group = name.removesuffix("Function") + "LogGroup"
        assert resources[name]["Properties"]["LoggingConfig"] == {"LogGroup": {"Ref": group}}
        logs = [s for _, s in statements(resources[f"{name}Role"])
                if any(a.startswith("logs:") for a in as_list(s["Action"]))]
        assert logs == [{"Effect": "Allow", "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
                         "Resource": {"Fn::GetAtt": [group, "Arn"]}}]


def test_one_cleanup_rule_for_this_state_machines_failed_executions(template, transformed):
    resources = transformed["Resources"]
    rules = {name: r for name, r in resources.items() if r["Type"] == "AWS::Events::Rule"}
    assert set(rules) == {f"{function}ExecutionEnded" for function in [*CLUSTER_FUNCTIONS, *NOTIFY_FUNCTIONS]}
    # the notify function hears every end, SUCCEEDED too, only when a notification is asked for
    told = rules.pop("NotifyFunctionExecutionEnded")
    assert told["Condition"] == "Notifies"
    assert told["Properties"]["EventPattern"]["detail"] == {
        "status": ["SUCCEEDED", "FAILED", "ABORTED", "TIMED_OUT"], "stateMachineArn": [{"Ref": "JobsStateMachine"}]}
    event = json.loads((ROOT / "events" / "cluster_cleanup.json").read_text())
    for function, condition in CLUSTER_FUNCTIONS.items():
        rule = rules[f"{function}ExecutionEnded"]
        assert rule["Condition"] == condition  # the two conditions exclude each other (see above)
        pattern = rule["Properties"]["EventPattern"]
        assert pattern == {"source": ["aws.states"], "detail-type": ["Step Functions Execution Status Change"],
                           "detail": {"status": ["ABORTED", "TIMED_OUT", "FAILED"],
                                      "stateMachineArn": [{"Ref": "JobsStateMachine"}]}}
        assert rule["Properties"]["Targets"][0]["Arn"] == {"Fn::GetAtt": [function, "Arn"]}
        permission = resources[f"{function}ExecutionEndedPermission"]
        assert permission["Condition"] == condition
        assert permission["Properties"]["SourceArn"] == {"Fn::GetAtt": [f"{function}ExecutionEnded", "Arn"]}
        # the recorded event the cleanup handler is tested with matches the pattern
        assert event["source"] in pattern["source"] and event["detail-type"] in pattern["detail-type"]
        assert event["detail"]["status"] in pattern["detail"]["status"]
    # the handler recognizes the event by its detail-type
    assert '"Step Functions Execution Status Change"' in (ROOT / "functions/handlers/cluster.py").read_text()


def test_cleanup_policy_reads_only_this_state_machines_executions(template, transformed):
    """The create task's post-create check and the sweep ask Step Functions about executions:
    only this state machine's, only from the cluster function of a backend that creates
    clusters, through a policy of its own (no cycle through the roles' ManagedPolicyArns)."""
    resources = transformed["Resources"]
    policy = resources["ClusterCleanupPolicy"]
    assert policy["Type"] == "AWS::IAM::Policy" and policy["Condition"] == "CreatesClusters"
    roles = [unwrap_if(r) for r in policy["Properties"]["Roles"]]
    assert roles == [("UseClusterFunction", {"Ref": "ClusterFunctionRole"}),
                     ("UseParallelCluster", {"Ref": "ParallelClusterFunctionRole"})]
    for backend in BACKENDS:
        created = resources_for(template, ClusterBackend=backend)
        conditions = conditions_for(template, ClusterBackend=backend)
        attached = {value["Ref"] for condition, value in roles if conditions[condition]}
        if backend == "existing":                       # nothing created, nothing to sweep
            assert "ClusterCleanupPolicy" not in created
        else:                                           # exactly the backend's cluster function role
            function = "ParallelClusterFunction" if backend == "parallelcluster" else "ClusterFunction"
            assert "ClusterCleanupPolicy" in created and attached == {f"{function}Role"} <= created
    found = {s["Sid"]: s for s in policy["Properties"]["PolicyDocument"]["Statement"]}
    assert set(found) == {"ReadThisStateMachinesExecutions", "FindRunSecrets", "KeepAbortedRunsResults"}
    assert found["KeepAbortedRunsResults"]["Action"] == "lambda:InvokeFunction"
    assert found["KeepAbortedRunsResults"]["Resource"] == {"Fn::GetAtt": ["ReleaseHeadNodeFunction", "Arn"]}
    describe = found["ReadThisStateMachinesExecutions"]
    assert describe["Action"] == "states:DescribeExecution"
    assert describe["Resource"] == {"Fn::Sub": "arn:${AWS::Partition}:states:${AWS::Region}:${AWS::AccountId}"
                                               ":execution:${JobsStateMachine.Name}:*"}
    scope = describe["Resource"]["Fn::Sub"].replace("${JobsStateMachine.Name}", "JobsStateMachine-AbC")
    ours = "arn:aws:states:us-east-1:123456789012:execution:JobsStateMachine-AbC:run-1"
    assert fnmatch.fnmatchcase(ours, sub(scope))
    for other in (ours.replace("JobsStateMachine-AbC", "JobsStateMachine-AbCD"),   # another stack's machine
                  ours.replace("us-east-1", "eu-west-1"),
                  "arn:aws:states:us-east-1:123456789012:stateMachine:JobsStateMachine-AbC"):
        assert not fnmatch.fnmatchcase(other, sub(scope)), other
    assert found["FindRunSecrets"]["Action"] == "secretsmanager:ListSecrets"
    # no other statement anywhere grants a Step Functions action, but the resume check's, which
    # reads the same executions (is the run to resume still running?) for every backend
    states = {path[0]: s for path, s in statements(resources)
              if any(a.startswith("states:") for a in as_list(s["Action"]))}
    assert set(states) == {"ClusterCleanupPolicy", "ResumeCheckPolicy", "NotifyFunctionRole"}
    assert states["NotifyFunctionRole"]["Resource"] == describe["Resource"]
    assert states["ResumeCheckPolicy"]["Action"] == "states:DescribeExecution"
    assert states["ResumeCheckPolicy"]["Resource"] == describe["Resource"]
    assert "Condition" not in resources["ResumeCheckPolicy"]


def test_the_sweep_runs_on_a_schedule_for_backends_that_create_clusters(template, transformed):
    resources = transformed["Resources"]
    schedule, role = resources["ClusterSweepSchedule"], resources["ClusterSweepScheduleRole"]
    assert schedule["Type"] == "AWS::Scheduler::Schedule"
    assert schedule["Condition"] == role["Condition"] == "CreatesClusters"
    for backend in BACKENDS:
        created = resources_for(template, ClusterBackend=backend)
        assert ({"ClusterSweepSchedule", "ClusterSweepScheduleRole"} <= created) == (backend != "existing")
    props = schedule["Properties"]
    assert props["ScheduleExpression"] == {"Fn::Sub": "rate(${CleanupSweepMinutes} minutes)"}
    assert props["State"] == "ENABLED" and props["FlexibleTimeWindow"] == {"Mode": "OFF"}
    minutes = template["Parameters"]["CleanupSweepMinutes"]
    assert [v for v in ("1", "4", "5", "15", "1440", "1441") if parameter_accepts(minutes, v)] == ["5", "15", "1440"]
    # the deployed backend's cluster function, with the recorded sweep event's shape
    cluster_function = {"Fn::If": ["UseParallelCluster", {"Fn::GetAtt": ["ParallelClusterFunction", "Arn"]},
                                   {"Fn::GetAtt": ["ClusterFunction", "Arn"]}]}
    target = props["Target"]
    assert target["Arn"] == cluster_function and target["RoleArn"] == {"Fn::GetAtt": ["ClusterSweepScheduleRole", "Arn"]}
    event = json.loads((ROOT / "events" / "cluster_sweep.json").read_text())
    text = target["Input"]["Fn::Sub"]
    assert json.loads(text.replace("${JobsStateMachine}", event["state_machine_arn"])) == event
    assert '"sweep"' in (ROOT / "functions/handlers/cluster.py").read_text()
    # the scheduler may invoke that function and nothing else
    trust = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert trust == [{"Effect": "Allow", "Principal": {"Service": "scheduler.amazonaws.com"}, "Action": "sts:AssumeRole",
                      "Condition": {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}}]
    granted = [s for _, s in statements(role["Properties"]["Policies"])]
    assert granted == [{"Effect": "Allow", "Action": "lambda:InvokeFunction", "Resource": cluster_function}]
    assert "ManagedPolicyArns" not in role["Properties"]


def dependencies(resources: dict) -> dict[str, set[str]]:
    """Logical id -> the logical ids it refers to (Ref, GetAtt, ${X} and ${X.Attr} in Sub, DependsOn)."""
    names = set(resources)

    def found(node) -> set[str]:
        out = set()
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "Ref" and value in names:
                    out.add(value)
                elif key == "Fn::GetAtt":
                    out.add(value[0] if isinstance(value, list) else value.split(".")[0])
                elif key == "Fn::Sub":
                    text = value if isinstance(value, str) else value[0]
                    out |= {m.split(".")[0] for m in re.findall(r"\$\{([^}!]+)\}", text)} & names
                    if isinstance(value, list):
                        out |= found(value[1])
                else:
                    out |= found(value)
        elif isinstance(node, list):
            for value in node:
                out |= found(value)
        return out

    return {name: (found(r.get("Properties", {})) | set(as_list(r.get("DependsOn", [])))) & names
            for name, r in resources.items()}


def test_no_circular_dependencies(transformed):
    """What CloudFormation refuses (and cfn-lint's E3004 finds only after the SAM transform):
    e.g. a policy naming the state machine attached through a cluster function role's
    ManagedPolicyArns (state machine -> function -> role -> policy -> state machine)."""
    graph = dependencies(transformed["Resources"])
    assert "JobsStateMachine" in graph["ClusterCleanupPolicy"]
    state, cycles = {}, []

    def visit(name, path):
        state[name] = "open"
        for other in sorted(graph[name]):
            if state.get(other) == "open":
                cycles.append(path[path.index(other):] + [other])
            elif other not in state:
                visit(other, path + [other])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_no_fixed_physical_names(template, transformed):
    for doc in (template, transformed):
        for name, resource in doc["Resources"].items():
            prop = NAME_PROPERTIES.get(resource["Type"])
            value = resource.get("Properties", {}).get(prop) if prop else None
            if value is None:
                continue
            # a name derived from the stack name is unique per stack, so allowed
            assert "${AWS::StackName}" in json.dumps(value), f"{name}.{prop} is fixed: {value}"


def test_outputs(template):
    outputs = template["Outputs"]
    assert outputs["StateMachineArn"]["Value"] == {"Ref": "JobsStateMachine"}
    assert outputs["StateMachineConsoleUrl"]["Value"] == {"Fn::Sub": (
        "https://${AWS::Region}.console.aws.amazon.com/states/home?region=${AWS::Region}"
        "#/statemachines/view/${JobsStateMachine}")}
    assert outputs["StateMachineLogGroupName"]["Value"] == {"Ref": "JobsStateMachineLogGroup"}


# --- samconfig.toml -----------------------------------------------------------------------------

def test_samconfig_settings(samconfig):
    assert samconfig["version"] == 0.1
    default = samconfig["default"]
    assert default["build"]["parameters"] == {"cached": True, "parallel": True}
    assert default["validate"]["parameters"] == {"lint": True}
    deploy = default["deploy"]["parameters"]
    assert deploy["capabilities"] == "CAPABILITY_IAM"
    assert deploy["resolve_s3"] is True and deploy["confirm_changeset"] is True
    assert deploy["stack_name"] == default["global"]["parameters"]["stack_name"]
    assert not any("region" in section["parameters"] for section in default.values())


def test_samconfig_overrides_are_valid_placeholders(template, samconfig):
    overrides = deploy_overrides(samconfig)
    parameters = template["Parameters"]
    assert {"ClusterBackend", "JobsPlanDigest", "JobSourceBucketArns", "JobSourceObjectArns"} <= set(overrides)
    assert set(overrides) <= set(parameters)
    for name, value in overrides.items():
        assert parameter_accepts(parameters[name], value), (name, value)
    # `sam deploy --guided` shows these first: every parameter a Rule may ask for is there
    asked = {m for rule in template["Rules"].values() for m in re.findall(r"'Ref': '(\w+)'", str(rule["Assertions"]))}
    assert asked - {"VpcSubnetIds", "VpcSecurityGroupIds"} <= set(overrides)
    # the placeholders themselves cannot deploy: the Rules stop it before anything is created
    assert failed_rules(template, **overrides)


def test_the_privileged_iam_condition_needs_parallelcluster_and_privileged(template):
    for backend in BACKENDS:
        for mode in ("base", "privileged"):
            truth = conditions_for(template, ClusterBackend=backend, ParallelClusterIamMode=mode)
            assert truth["ParallelClusterPrivilegedIam"] == (backend == "parallelcluster" and mode == "privileged")
    assert template["Parameters"]["ParallelClusterIamMode"]["Default"] == "base"


def test_s3_sources_reach_cloudformation_unchanged_and_pass_the_template_patterns(template, tmp_path):
    """What preprocess writes for S3 keys with IAM wildcards, spaces and quotes is read back by
    the SAM CLI's own parameter_overrides parser as written, each list item one ARN, and every
    value passes its parameter's AllowedPattern."""
    from stepcluster.preprocess import preprocess

    uris = ["s3://bkt/*", "s3://bkt/a?c/", "s3://bkt/$x", "s3://bkt/a b;#%'=/", "s3://other-bkt/k"]
    names = [f"j{i}" for i in range(len(uris))]
    (tmp_path / "jobs.ini").write_text("[order]\nparallel = " + ", ".join(names) + "\n" + "".join(
        f"\n[job {n}]\nhandler = run.sh\ns3_uri = {u}\n" for n, u in zip(names, uris)))
    copy = tmp_path / "samconfig.toml"
    shutil.copy(SAMCONFIG, copy)
    result = preprocess(tmp_path / "jobs.ini", plan_dir=tmp_path / "plan", samconfig=copy)
    overrides = deploy_overrides(tomllib.loads(copy.read_text()))
    assert {name: overrides[name] for name in result.overrides} == result.overrides
    assert overrides["JobSourceObjectArns"].split(",") == [
        "arn:aws:s3:::bkt/${$}x*", "arn:aws:s3:::bkt/${*}*", "arn:aws:s3:::bkt/a b;#%'=/*",
        "arn:aws:s3:::bkt/a${?}c/*", "arn:aws:s3:::other-bkt/k*"]
    assert overrides["JobSourceBucketArns"] == "arn:aws:s3:::bkt,arn:aws:s3:::other-bkt"
    for name, value in overrides.items():
        assert parameter_accepts(template["Parameters"][name], value), (name, value)


def test_preprocess_rewrite_keeps_samconfig_valid_for_the_template(template, tmp_path):
    from stepcluster.preprocess import update_parameter_overrides

    copy = tmp_path / "samconfig.toml"
    shutil.copy(SAMCONFIG, copy)
    values = {"ClusterBackend": "parallelcluster",
              "JobsPlanDigest": "0123456789abcdef0123456789abcdef",
              "JobSourceBucketArns": "arn:aws:s3:::bucket-a,arn:aws:s3:::bucket-b",
              "JobSourceObjectArns": "arn:aws:s3:::bucket-a/inputs/x.dat*,arn:aws:s3:::bucket-b/*"}
    update_parameter_overrides(copy, values)
    rewritten = tomllib.loads(copy.read_text())
    overrides = deploy_overrides(rewritten)
    for name, value in overrides.items():
        assert parameter_accepts(template["Parameters"][name], value), name
    for name, value in values.items():
        assert overrides[name] == value
    assert set(deploy_overrides(tomllib.loads(SAMCONFIG.read_text()))) == set(overrides)
    before = tomllib.loads(SAMCONFIG.read_text())
    before["default"]["deploy"]["parameters"].pop("parameter_overrides")
    rewritten["default"]["deploy"]["parameters"].pop("parameter_overrides")
    assert rewritten == before


# --- the SAM CLI --------------------------------------------------------------------------------

def sam_command(*args, cwd=ROOT):
    env = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               AWS_DEFAULT_REGION=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
               PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", SAM_CLI_TELEMETRY="0")
    binary = shutil.which("sam", path=env["PATH"])
    if binary is None:
        pytest.fail(f"the `sam` command is not on PATH (nor in {VENV_BIN}): run `make install`")
    return subprocess.Popen([binary, *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(process, timeout=180):
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    assert process.returncode == 0, f"{' '.join(process.args)} failed:\n{stdout}\n{stderr}"
    return stdout + stderr


def test_sam_validate_lint():
    output = finish(sam_command("validate", "--lint", "--template-file", str(TEMPLATE)), timeout=120)
    assert "is a valid SAM Template" in output


# The published layer (no ParallelClusterLayerArn): the default a user gets.
PARALLELCLUSTER_OVERRIDES = ["ClusterBackend=parallelcluster"]


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """`sam build` with the default parameters and with ClusterBackend=parallelcluster, side by
    side into temporary folders; no cache, so a stale .aws-sam cannot hide a failure."""
    base = tmp_path_factory.mktemp("sam")
    common = ["build", "--template-file", str(TEMPLATE), "--no-cached", "--parallel"]
    started = {
        "default": sam_command(*common, "--build-dir", str(base / "default")),
        "parallelcluster": sam_command(*common, "--build-dir", str(base / "parallelcluster"),
                                       "--parameter-overrides", *PARALLELCLUSTER_OVERRIDES),
    }
    for process in started.values():
        finish(process)
    return {name: base / name for name in started}


def built_paths(build_dir) -> dict[str, Path]:
    built = plain(cfn_yaml.load(str(build_dir / "template.yaml")))
    return {name: build_dir / r["Properties"].get("CodeUri", r["Properties"].get("ContentUri", ""))
            for name, r in built["Resources"].items()
            if r["Type"] in ("AWS::Serverless::Function", "AWS::Serverless::LayerVersion")}


def test_sam_build_ships_the_package_with_bytecode_and_paramiko_in_the_ssh_layer(builds):
    paths = built_paths(builds["default"])
    for name, module in SHARED_CODE_FUNCTIONS.items():
        code = paths[name]
        for path in ("stepcluster/__init__.py", "stepcluster/remote/ssh.py", f"handlers/{module}.py"):
            assert (code / path).is_file(), f"{name}: no {path} in {code}"
        # run-local's engine and the CLI are no function's; paramiko comes from SshLayer
        for path in ("stepcluster/local", "stepcluster/cli.py", "paramiko", "cryptography"):
            assert not (code / path).exists(), f"{name} ships {path}"
        assert_compiled(code)
    ssh = paths["SshLayer"] / "python"
    for path in ("paramiko/__init__.py", "cryptography/__init__.py", "nacl/__init__.py", "bcrypt/__init__.py"):
        assert (ssh / path).is_file(), f"SshLayer: no python/{path}"
    assert_compiled(ssh)
    # CfnclusterLayer holds only what pip installs from layers/cfncluster/requirements.txt
    # (botocore's CA bundle, test certificates of `future`): no project file reaches it.
    for name, code in paths.items():
        if name == "CfnclusterLayer":
            assert not (code / "python" / "stepcluster").exists()
            continue
        secrets = [p for p in code.rglob("*") if p.name in ("credentials", "id_rsa", "id_ed25519")
                   or p.suffix in (".pem", ".key")]
        assert not secrets, f"{name} ships key or credential files: {secrets}"
    layer = paths["CfnclusterLayer"] / "python"
    for path in ("cfncluster/cfncluster.py", "pkg_resources/__init__.py"):
        assert (layer / path).is_file(), f"CfnclusterLayer: no {path}"


def assert_compiled(folder: Path) -> None:
    """Every module in `folder` has a CPython 3.11 pyc that loads whatever the source's mtime
    (PEP 552 unchecked-hash: flags 0b01), so a cold start on Lambda's read-only disk compiles
    nothing."""
    import importlib.util

    magic = importlib.util.MAGIC_NUMBER
    assert sys.version_info[:2] == (3, 11), "the build compiles for python3.11: run the tests on it"
    sources = [p for p in folder.rglob("*.py") if "__pycache__" not in p.parts]
    assert sources, folder
    for source in sources:
        pyc = Path(importlib.util.cache_from_source(str(source)))
        assert pyc.is_file(), f"no bytecode for {source}"
        header = pyc.read_bytes()[:8]
        assert header[:4] == magic and int.from_bytes(header[4:8], "little") == 0b01, \
            f"{pyc}: not an unchecked-hash pyc of this Python"


def test_each_function_starts_from_its_package_and_layers_alone(builds):
    """The first call of each python3.11 function (handler, run service, the SSH client where it
    logs in, boto3 clients) in an interpreter that sees only the function's built package, its
    layers and what the Lambda runtime has (standard library, boto3): nothing missing, nothing
    from elsewhere, each package within 15 MB unzipped."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import measure_packages

    measure_packages._dummy_aws_env()
    functions = measure_packages.built_functions(builds["default"])
    assert set(functions) == set(SHARED_CODE_FUNCTIONS)
    runtime = measure_packages.runtime_folder(builds["default"].parent / "runtime")
    for name, built in functions.items():
        assert ("SshLayer" in built["layers"]) == (name in SSH_FUNCTIONS or name == "ClusterFunction"), name
        module, extra, clients = measure_packages.FIRST_CALL[name]
        extra = [m for m in extra if not m.startswith("cfncluster")]
        folders = [built["code"], *(f / "python" for f in built["layers"].values())]
        result = measure_packages.probe([*folders, runtime], module, extra, clients)
        assert result["outside"] == [], name
        assert measure_packages.tree_bytes(built["code"]) <= 15 * 10**6, name


def test_the_ssh_layer_signs_with_an_ed25519_key_alone(builds, tmp_path):
    """The run's key is Ed25519 (stepcluster.keys): paramiko signs with PyNaCl, which the layer
    ships without pycparser, and reads the OpenSSH key format with bcrypt."""
    ssh = built_paths(builds["default"])["SshLayer"] / "python"
    probe = ("import sys; sys.path[:0] = [sys.argv[1]]\n"
             "from cryptography.hazmat.primitives import serialization as s\n"
             "from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey\n"
             "import io, paramiko\n"
             "pem = Ed25519PrivateKey.generate().private_bytes(s.Encoding.PEM, s.PrivateFormat.OpenSSH, s.NoEncryption())\n"
             "key = paramiko.Ed25519Key.from_private_key(io.StringIO(pem.decode()))\n"
             "message = key.sign_ssh_data(b'data', 'ssh-ed25519')\n"
             "message.rewind()\n"
             "assert paramiko.Ed25519Key(data=key.asbytes()).verify_ssh_sig(b'data', message)\n"
             "assert 'pycparser' not in sys.modules and 'invoke' not in sys.modules\n"
             "print(paramiko.__file__)")
    result = subprocess.run([sys.executable, "-I", "-S", "-c", probe, str(ssh)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(str(ssh)), result.stdout


def test_the_ssh_layer_holds_every_requirement_it_does_not_name_as_left_out(builds):
    """layers/ssh/requirements.txt is installed with --no-deps: a new requirement of a new
    paramiko (or of its dependencies) must be added there, or named as left out and why."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    left_out = {"invoke", "pycparser"}  # requirements.txt says why each is not needed
    ssh = built_paths(builds["default"])["SshLayer"] / "python"
    installed = {canonicalize_name(p.name.split("-")[0]) for p in ssh.glob("*.dist-info")}
    env = {"python_version": "3.11", "python_full_version": "3.11.0", "platform_python_implementation": "CPython",
           "implementation_name": "cpython", "sys_platform": "linux", "platform_system": "Linux",
           "platform_machine": "x86_64", "os_name": "posix", "extra": ""}
    for dist in ssh.glob("*.dist-info"):
        for line in (dist / "METADATA").read_text().splitlines():
            if line.startswith("Requires-Dist:"):
                requirement = Requirement(line.split(":", 1)[1].strip())
                if requirement.marker and not requirement.marker.evaluate(env):
                    continue
                name = canonicalize_name(requirement.name)
                assert name in installed or name in left_out, f"{dist.name} requires {requirement}: not in the layer"


def test_sam_build_for_parallelcluster_ships_the_stepcluster_layer(builds):
    paths = built_paths(builds["parallelcluster"])
    function = paths["ParallelClusterFunction"]
    assert (function / "cluster.py").is_file()
    assert not (function / "stepcluster").exists() and not (function / "paramiko").exists()
    layer = paths["StepclusterLayer"] / "python"
    for path in ("stepcluster/__init__.py", "stepcluster/keys.py", "stepcluster/clusters/parallelcluster.py",
                 "cryptography/__init__.py"):
        assert (layer / path).is_file(), f"StepclusterLayer: no python/{path}"
    assert not list(layer.rglob("__pycache__"))
    plan = ROOT / "functions" / "plan"
    if plan.is_dir():  # written by `stepcluster preprocess`, absent in a fresh checkout
        assert sorted(p.name for p in (layer / "plan").iterdir()) == sorted(p.name for p in plan.iterdir())


def wheel_tags(folder: Path) -> dict[str, set[tuple[str, str, str]]]:
    """Each wheel installed in a built folder -> its (python, abi, platform) tags."""
    wheels = {}
    for wheel in folder.glob("*.dist-info/WHEEL"):
        wheels[wheel.parent.name] = {tuple(line.split(":", 1)[1].strip().split("-"))
                                     for line in wheel.read_text().splitlines() if line.startswith("Tag:")}
    return wheels


def loads_on_lambda(tag: tuple[str, str, str], arch: str, glibc_max: tuple[int, int], python: int) -> bool:
    """Whether a wheel tag fits a Lambda runtime: CPU, glibc, and Python 3.`python`."""
    py, abi, platform = tag
    if not (py in ("py3", "py2.py3", f"cp3{python}") or abi == "abi3" and int(py.removeprefix("cp3")) <= python):
        return False
    if platform == "any":
        return True
    legacy = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
    match = re.fullmatch(r"(manylinux1|manylinux2010|manylinux2014|manylinux_(\d+)_(\d+))_(\w+)", platform)
    if not match:
        return False
    glibc = legacy.get(match[1]) or (int(match[2]), int(match[3]))
    return glibc <= glibc_max and match[4] == arch


def test_built_wheels_run_on_the_lambda_runtime(template, builds):
    """python3.11 Lambda runs Amazon Linux 2 (glibc 2.26), python3.12 Amazon Linux 2023 (glibc
    2.34): every wheel needs a tag for the runtime's Python, a glibc no newer, and the template's
    Architectures (this machine's pip would happily pick another)."""
    arch = {"x86_64": "x86_64", "arm64": "aarch64"}[template["Globals"]["Function"]["Architectures"][0]]
    default = built_paths(builds["default"])
    layer = built_paths(builds["parallelcluster"])["StepclusterLayer"] / "python"
    for folder, glibc_max, python in ((default["SshLayer"] / "python", (2, 26), 11),
                                      (default["CfnclusterLayer"] / "python", (2, 26), 11),
                                      (layer, (2, 34), 12)):
        wheels = wheel_tags(folder)
        assert wheels, folder
        for wheel, tags in wheels.items():
            assert any(loads_on_lambda(tag, arch, glibc_max, python) for tag in tags), (folder, wheel, tags)


