"""template.yaml and samconfig.toml: they agree with the definition, the code and each other.

The last tests run `sam validate --lint` and `sam build` (about 10 s together) with the
environment the Makefile gives them: dummy credentials, a region, the venv's bin first on PATH.
"""

from __future__ import annotations

import dataclasses
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

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
DEFINITION = ROOT / "statemachine" / "definition.asl.json"
SAMCONFIG = ROOT / "samconfig.toml"
VENV_BIN = Path(sys.executable).parent

FUNCTIONS = {  # logical id -> handler module
    "CreateClusterFunction": "create_cluster",
    "ClusterStatusFunction": "cluster_status",
    "SubmitJobsFunction": "submit_jobs",
    "PollJobsFunction": "poll_jobs",
    "CancelJobsFunction": "cancel_jobs",
    "DeleteClusterFunction": "delete_cluster",
}
SSH_FUNCTIONS = set(FUNCTIONS)  # each may SSH to the head node (status: once READY)

# Actions AWS documents as supporting only Resource "*" (Step Functions log delivery set-up).
STAR_RESOURCE_ACTIONS = {
    "logs:CreateLogDelivery", "logs:GetLogDelivery", "logs:UpdateLogDelivery",
    "logs:DeleteLogDelivery", "logs:ListLogDeliveries", "logs:PutResourcePolicy",
    "logs:DescribeResourcePolicies", "logs:DescribeLogGroups",
}

# Resource type -> property that would fix its physical name.
NAME_PROPERTIES = {
    "AWS::Serverless::Function": "FunctionName",
    "AWS::Lambda::Function": "FunctionName",
    "AWS::Serverless::StateMachine": "Name",
    "AWS::StepFunctions::StateMachine": "StateMachineName",
    "AWS::Logs::LogGroup": "LogGroupName",
    "AWS::IAM::Role": "RoleName",
    "AWS::IAM::ManagedPolicy": "ManagedPolicyName",
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


# --- the definition and the template ------------------------------------------------------------

def test_definition_placeholders_are_the_substitution_keys(template):
    text = DEFINITION.read_text()
    json.loads(text)  # placeholders sit inside JSON strings: the file is JSON before substitution
    placeholders = set(re.findall(r"\$\{([^}]*)\}", text))
    substitutions = template["Resources"]["JobsStateMachine"]["Properties"]["DefinitionSubstitutions"]
    assert placeholders == set(substitutions)


def test_substitutions_point_at_the_right_things(template):
    substitutions = template["Resources"]["JobsStateMachine"]["Properties"]["DefinitionSubstitutions"]
    expected = {f"{name}Arn": {"Fn::GetAtt": [name, "Arn"]} for name in FUNCTIONS}
    expected["JobsPlanDigest"] = {"Ref": "JobsPlanDigest"}
    assert substitutions == expected


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
    definition = json.loads(DEFINITION.read_text())
    called = set()
    for name, state in task_states(definition["States"]):
        target = state.get("Parameters", {}).get("FunctionName", state["Resource"])
        match = re.fullmatch(r"\$\{(\w+Function)Arn\}(:\$LATEST)?", target)
        if not match:
            continue
        function = match[1]
        called.add(function)
        timeout = template["Resources"][function]["Properties"].get("Timeout", default)
        assert state.get("TimeoutSeconds", 0) >= timeout, f"{name}: TimeoutSeconds < {function} Timeout {timeout}"
    assert called == set(FUNCTIONS)


def test_state_machine_may_invoke_exactly_the_six_functions(template):
    machine = template["Resources"]["JobsStateMachine"]["Properties"]
    assert machine["Type"] == "STANDARD"
    invoked = [p["LambdaInvokePolicy"]["FunctionName"] for p in machine["Policies"] if "LambdaInvokePolicy" in p]
    assert sorted(invoked, key=str) == sorted(({"Ref": name} for name in FUNCTIONS), key=str)
    logging = machine["Logging"]
    assert logging["IncludeExecutionData"] is True and logging["Level"] in ("ALL", "ERROR")


def test_functions_share_one_code_folder_and_their_handlers_exist(template):
    glob = template["Globals"]["Function"]
    assert glob["CodeUri"] == "functions/" and glob["Runtime"] == "python3.11"
    functions = {k: v for k, v in template["Resources"].items() if v["Type"] == "AWS::Serverless::Function"}
    assert set(functions) == set(FUNCTIONS)
    for name, module in FUNCTIONS.items():
        props = functions[name]["Properties"]
        assert "CodeUri" not in props and "Runtime" not in props, name
        assert props["Handler"] == f"handlers.{module}.handler"
        source = ROOT / "functions" / "handlers" / f"{module}.py"
        assert re.search(r"^def handler\(", source.read_text(), re.M), f"{source} has no handler()"


def test_environment_matches_what_the_code_reads(template):
    from stepcluster.settings import Settings

    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    read = {f"STEPCLUSTER_{f.name.upper()}" for f in dataclasses.fields(Settings)}
    assert set(variables) == read | {"LOG_LEVEL"}
    for value in variables.values():  # every value comes from a parameter
        assert set(value) == {"Ref"} and value["Ref"] in template["Parameters"]


def test_parameters_are_described_and_their_defaults_valid(template):
    for name, parameter in template["Parameters"].items():
        assert len(parameter.get("Description", "")) > 20, f"{name} needs a Description"
        if "AllowedPattern" in parameter:
            assert parameter.get("ConstraintDescription"), f"{name} needs a ConstraintDescription"
        if "Default" in parameter:
            assert parameter_accepts(parameter, str(parameter["Default"])), name


@pytest.mark.parametrize("name, good, bad", [
    ("SshKeySecretArn",
     ["arn:aws:secretsmanager:eu-west-1:123456789012:secret:stepcluster/hpc-key-AbC123"],
     ["arn:aws:secretsmanager:eu-west-1:123456789012:secret:stepcluster/hpc-key",  # partial ARN
      "stepcluster/hpc-key", "REPLACE_ME"]),
    ("HeadNodeHostKey",
     ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGb0cJ1dLvh6gI+Ixk2Ju4GqzN7sY0v0s2y1aBkKo7fT",
      "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTY= root@head",
      "head.example.org ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGb0cJ1dLvh6gI+Ixk2Ju4GqzN7sY0v0s2y1aBkKo7fT",
      "[10.0.0.5]:2222 ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ==",
      "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s"],
     ["256 SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s root@head (ED25519)",
      "MD5:aa:bb", "ssh-dss AAAAB3NzaC1kc3M=", "REPLACE_ME", ""]),
    ("HeadNodeHost", ["head.example.org", "10.0.1.23", "fd00::23"], ["REPLACE_ME", "", "-x"]),
    ("HeadNodeUser", ["ec2-user", "hpc"], ["REPLACE_ME", "root; rm", ""]),
    ("JobsPlanDigest", ["none", "0123456789abcdef0123456789abcdef"], ['a"b', "", "a b"]),
    ("JobSourceBucketArns", ["", "arn:aws:s3:::my-bucket,arn:aws:s3:::other.bucket"],
     ["s3://my-bucket", "arn:aws:s3:::my-bucket/key"]),
    ("JobSourceObjectArns", ["", "arn:aws:s3:::my-bucket/inputs/*,arn:aws:s3:::bkt/*"],
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


# --- permissions --------------------------------------------------------------------------------

def test_no_wildcard_actions_and_star_resources_only_where_aws_requires_them(transformed):
    found = list(statements(transformed["Resources"]))
    assert len(found) > 10
    for path, statement in found:
        assert "NotAction" not in statement and "NotResource" not in statement, path
        actions = as_list(statement["Action"])
        for action in actions:
            assert isinstance(action, str), path
            assert action != "*" and not action.endswith(":*"), (path, action)
        if statement["Effect"] == "Allow" and "*" in as_list(statement.get("Resource")):
            assert set(actions) <= STAR_RESOURCE_ACTIONS, (path, actions)


def test_ssh_key_readable_only_by_the_functions_that_ssh(transformed):
    resources = transformed["Resources"]
    key_policy = resources["SshKeyReadPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert key_policy == [{"Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
                           "Resource": {"Ref": "SshKeySecretArn"}}]
    readers = {name for name in FUNCTIONS
               if {"Ref": "SshKeyReadPolicy"} in as_list(resources[f"{name}Role"]["Properties"]["ManagedPolicyArns"])}
    assert readers == SSH_FUNCTIONS
    others = [path for path, s in statements(resources)
              if any(a.startswith("secretsmanager:") for a in as_list(s["Action"]))]
    assert others == [("SshKeyReadPolicy", "Properties", "PolicyDocument", "Statement", 0)]


def test_s3_reads_only_for_submit_and_only_when_given(transformed):
    s3 = [(path, s) for path, s in statements(transformed["Resources"])
          if any(a.startswith("s3:") for a in as_list(s["Action"]))]
    assert {(s["Action"], json.dumps(s["Resource"])) for _, s in s3} == {
        ("s3:ListBucket", json.dumps({"Ref": "JobSourceBucketArns"})),
        ("s3:GetObject", json.dumps({"Ref": "JobSourceObjectArns"})),
    }
    policies = transformed["Resources"]["SubmitJobsFunctionRole"]["Properties"]["Policies"]
    condition = {"s3:ListBucket": "HasJobSourceBuckets", "s3:GetObject": "HasJobSourceObjects"}
    for path, statement in s3:
        # ("SubmitJobsFunctionRole", "Properties", "Policies", i, "Fn::If", 1, "PolicyDocument", ...)
        assert path[:3] == ("SubmitJobsFunctionRole", "Properties", "Policies") and path[4:6] == ("Fn::If", 1), path
        entry = policies[path[3]]["Fn::If"]
        assert entry[0] == condition[statement["Action"]] and entry[2] == {"Ref": "AWS::NoValue"}


def test_vpc_access_only_when_the_functions_are_in_a_vpc(template, transformed):
    resources = transformed["Resources"]
    for name in FUNCTIONS:
        props = resources[name]["Properties"]
        assert props["VpcConfig"]["Fn::If"][0] == "UseVpc"
        assert props["VpcConfig"]["Fn::If"][2] == {"Ref": "AWS::NoValue"}
    vpc_policy = "service-role/AWSLambdaVPCAccessExecutionRole"
    for path, node in walk(resources):
        if isinstance(node, str) and vpc_policy in node:
            # reached only through an Fn::If on UseVpc (SAM's generated roles add it unconditionally)
            assert "Fn::If" in path, f"{vpc_policy} attached unconditionally at {path}"
            if_at = max(i for i, key in enumerate(path) if key == "Fn::If")
            owner = resources[path[0]]
            for key in path[1:if_at]:
                owner = owner[key]
            assert owner["Fn::If"][0] == "UseVpc" and path[if_at + 1] == 1, path
    assert template["Conditions"]["UseVpc"]


def test_each_function_writes_only_its_own_log_group(transformed):
    resources = transformed["Resources"]
    for name in FUNCTIONS:
        group = name.removesuffix("Function") + "LogGroup"
        assert resources[name]["Properties"]["LoggingConfig"] == {"LogGroup": {"Ref": group}}
        logs = [s for _, s in statements(resources[f"{name}Role"])
                if any(a.startswith("logs:") for a in as_list(s["Action"]))]
        assert logs == [{"Effect": "Allow", "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
                         "Resource": {"Fn::GetAtt": [group, "Arn"]}}]


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


def test_samconfig_overrides_cover_the_required_parameters(template, samconfig):
    overrides = deploy_overrides(samconfig)
    parameters = template["Parameters"]
    assert set(overrides) <= set(parameters)
    required = {name for name, p in parameters.items() if "Default" not in p}
    assert required <= set(overrides)
    for name, value in overrides.items():
        if value == "REPLACE_ME":  # a placeholder must fail the deployment, not deploy
            assert name in required and not parameter_accepts(parameters[name], value), name
        else:
            assert parameter_accepts(parameters[name], value), (name, value)


def test_preprocess_rewrite_keeps_samconfig_valid_for_the_template(template, tmp_path):
    from stepcluster.preprocess import update_parameter_overrides

    copy = tmp_path / "samconfig.toml"
    shutil.copy(SAMCONFIG, copy)
    values = {"JobsPlanDigest": "0123456789abcdef0123456789abcdef",
              "JobSourceBucketArns": "arn:aws:s3:::bucket-a,arn:aws:s3:::bucket-b",
              "JobSourceObjectArns": "arn:aws:s3:::bucket-a/inputs/x.dat*,arn:aws:s3:::bucket-b/*"}
    update_parameter_overrides(copy, values)
    rewritten = tomllib.loads(copy.read_text())
    overrides = deploy_overrides(rewritten)
    for name, value in values.items():
        assert overrides[name] == value
        assert parameter_accepts(template["Parameters"][name], value), name
    before = tomllib.loads(SAMCONFIG.read_text())
    before["default"]["deploy"]["parameters"].pop("parameter_overrides")
    rewritten["default"]["deploy"]["parameters"].pop("parameter_overrides")
    assert rewritten == before


# --- the SAM CLI --------------------------------------------------------------------------------

def sam(*args, cwd=ROOT, timeout=120):
    env = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               AWS_DEFAULT_REGION=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
               PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", SAM_CLI_TELEMETRY="0")
    binary = shutil.which("sam", path=env["PATH"])
    if binary is None:
        pytest.fail(f"the `sam` command is not on PATH (nor in {VENV_BIN}): run `make install`")
    result = subprocess.run([binary, *args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"sam {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def test_sam_validate_lint():
    result = sam("validate", "--lint", "--template-file", str(TEMPLATE))
    assert "is a valid SAM Template" in result.stdout + result.stderr


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory):
    """One `sam build` into a temporary folder; no cache, so a stale .aws-sam cannot hide a failure."""
    base = tmp_path_factory.mktemp("sam")
    sam("build", "--template-file", str(TEMPLATE), "--build-dir", str(base / "build"),
        "--no-cached", "--parallel")
    return base / "build"


def test_sam_build_ships_the_package_and_paramiko(build_dir):
    built = plain(cfn_yaml.load(str(build_dir / "template.yaml")))
    for name, module in FUNCTIONS.items():
        code = build_dir / built["Resources"][name]["Properties"]["CodeUri"]
        for path in ("stepcluster/__init__.py", "paramiko/__init__.py", f"handlers/{module}.py"):
            assert (code / path).is_file(), f"{name}: no {path} in {code}"
        secrets = [p for p in code.rglob("*") if p.name in ("credentials", "id_rsa", "id_ed25519")
                   or p.suffix in (".pem", ".key")]
        assert not secrets, f"{name} ships key or credential files: {secrets}"


def test_built_wheels_run_on_the_lambda_runtime(template, build_dir):
    """python3.11 Lambda runs Amazon Linux 2 (glibc 2.26): no wheel may need a newer glibc, nor
    another CPU than the template's Architectures (this machine's pip would happily pick one)."""
    arch = {"x86_64": "x86_64", "arm64": "aarch64"}[template["Globals"]["Function"]["Architectures"][0]]
    legacy = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
    tags = {line.split(":", 1)[1].strip() for wheel in (build_dir / "SubmitJobsFunction").glob("*.dist-info/WHEEL")
            for line in wheel.read_text().splitlines() if line.startswith("Tag:")}
    assert tags
    for tag in tags:
        platform = tag.split("-")[2]
        if platform == "any":
            continue
        match = re.fullmatch(r"(manylinux1|manylinux2010|manylinux2014|manylinux_(\d+)_(\d+))_(\w+)", platform)
        assert match, f"wheel tag {tag} is not a manylinux tag"
        glibc = legacy.get(match[1]) or (int(match[2]), int(match[3]))
        assert glibc <= (2, 26) and match[4] == arch, f"wheel tag {tag} will not load on Lambda"


def test_built_code_imports_paramiko_from_the_artifact(build_dir):
    code = build_dir / "SubmitJobsFunction"
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import paramiko, stepcluster, handlers; "
             "print(paramiko.__file__); print(stepcluster.__file__)")
    result = subprocess.run([sys.executable, "-c", probe, str(code)], capture_output=True, text=True,
                            cwd=build_dir, timeout=60)
    assert result.returncode == 0, result.stderr
    assert all(line.startswith(str(code)) for line in result.stdout.split()), result.stdout
