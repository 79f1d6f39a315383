"""A ParallelCluster cluster's real stack, made offline by ParallelCluster's own code.

`synthesize(config)` drives the project's ParallelCluster backend (stepcluster.clusters.
parallelcluster) through a whole lifecycle, create -> status -> delete -> deletion status, with
the real `pcluster.lib` (aws-parallelcluster 3.16.1 in the venv): its config loading, its
validators, its CDK template builder (aws_cdk on Node.js) and its S3 uploads. The AWS calls
they make are served by moto and recorded with botocore's `before-parameter-build` event
(service, operation, the call's own parameters), so the test knows exactly which API calls
pcluster.lib makes with the function's credentials.

Where moto cannot play AWS, the harness answers for it, and says so here:
- the official AMI lookup: an image named as ParallelCluster names its AMIs, owned by "amazon";
- S3 PutBucketPolicy: moto enforces the bucket's aws:SecureTransport deny on its own plain
  HTTP; the call is recorded and answered with success;
- CloudFormation CreateStack: moto cannot parse the synthesized template (custom resources,
  composite alarms); the call is recorded with the real TemplateURL, then sent to moto with a
  one-resource stand-in body (same name and tags), so describe and delete have a stack to see;
- three validators that ask moto what it cannot answer (RunInstances dry runs with EBS
  mappings, KeyType of a key pair) are suppressed: `SUPPRESSED_VALIDATORS`. Their calls are
  still made once, by a dry run without suppression, so they are recorded too.
"""

from __future__ import annotations

import copy
import json
import os
import re
from dataclasses import dataclass, field
from urllib.parse import unquote, urlparse

import boto3
from botocore.awsrequest import AWSResponse

from .template import ACCOUNT, REGION, STACK
from .recording import ApiCall, Recorder, lifecycle_calls

CLUSTER = "synth"
PCLUSTER_VERSION = "3.16.1"
AMI_ID = "ami-0a1b2c3d4e5f60718"
SUPPRESSED_VALIDATORS = ("HeadNodeLaunchTemplateValidator", "ComputeResourceLaunchTemplateValidator",
                         "KeyPairValidator")
STAND_IN_BODY = json.dumps({"Resources": {"StandIn": {"Type": "AWS::CloudFormation::WaitConditionHandle"}}})


@dataclass
class SynthesizedCluster:
    """The cluster stack CloudFormation would be asked to create, and how it was asked."""

    template: dict                    # the root stack's template
    nested: dict[str, dict]           # logical id of each AWS::CloudFormation::Stack -> its template
    stack_tags: dict[str, str]        # the tags CreateStack gives the stack (propagated by CFN)
    calls: dict[str, list[ApiCall]] = field(default_factory=dict)  # lifecycle phase -> calls

    def resources(self):
        """(stack logical id or None for the root, logical id, resource) of every resource."""
        for name, resource in self.template["Resources"].items():
            yield None, name, resource
        for stack, template in self.nested.items():
            for name, resource in template.get("Resources", {}).items():
                yield stack, name, resource

    def types(self) -> set[str]:
        return {r["Type"] for _, _, r in self.resources()}


class _Recorder(Recorder):
    """The calls pcluster makes, with moto's two gaps answered."""

    def before_parameter_build(self, params, model, **kwargs):
        super().before_parameter_build(params, model, **kwargs)
        if self.calls[-1].name == "cloudformation:CreateStack":
            params.pop("TemplateURL", None)
            params.pop("Parameters", None)
            params["TemplateBody"] = STAND_IN_BODY

    def before_call(self, model, **_):
        if f"{model.service_model.service_name}:{model.name}" == "s3:PutBucketPolicy":
            return AWSResponse("https://stand-in", 204, {}, None), {}
        return None


def _aws_world(config: dict) -> dict:
    """The account pcluster looks at: a VPC with a subnet, the official AMI; the config's
    subnets and file systems point at them. Returns the filled-in config."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ec2.models import ec2_backends
    from moto.ec2.models.amis import Ami

    ec2 = boto3.client("ec2", region_name=REGION)
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsSupport={"Value": True})
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24",
                               AvailabilityZone=f"{REGION}a")["Subnet"]["SubnetId"]
    backend = ec2_backends[DEFAULT_ACCOUNT_ID][REGION]
    backend.amis[AMI_ID] = Ami(
        backend, ami_id=AMI_ID, owner_alias="amazon", public=True, architecture="x86_64",
        name=f"aws-parallelcluster-{PCLUSTER_VERSION}-amzn2023-hvm-x86_64-202601010000 2026-01-01T00-00-00.000Z",
        root_device_name="/dev/xvda", root_device_type="ebs", virtualization_type="hvm",
        tags={"parallelcluster:version": PCLUSTER_VERSION})
    text = json.dumps(config).replace("subnet-0123456789abcdef0", subnet)
    # The roles and instance profiles the config names exist (pcluster's validators look).
    iam = boto3.client("iam", region_name=REGION)
    trust = json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": ["ec2.amazonaws.com", "lambda.amazonaws.com"]},
         "Action": "sts:AssumeRole"}]})
    for kind, path, name in sorted(set(re.findall(r"arn:aws:iam::\d{12}:(role|instance-profile)(/(?:[^/\"]+/)*)([^/\"]+)", text))):
        if kind == "role":
            iam.create_role(RoleName=name, Path=path, AssumeRolePolicyDocument=trust)
        else:
            iam.create_instance_profile(InstanceProfileName=name, Path=path)
    return json.loads(text)


def _fetch(url: str) -> dict:
    """A template pcluster uploaded, read back from moto's S3 by its https URL."""
    parsed = urlparse(url)
    host = parsed.netloc
    if host.startswith("s3.") or host.startswith("s3-"):
        bucket, _, key = parsed.path.lstrip("/").partition("/")
    else:
        bucket, key = host.split(".s3.")[0], parsed.path.lstrip("/")
    body = boto3.client("s3", region_name=REGION).get_object(Bucket=bucket, Key=unquote(key))["Body"].read()
    import yaml
    return yaml.safe_load(body)


def _nested_templates(template: dict, parameters: dict[str, str]) -> dict[str, dict]:
    """The nested stacks' templates: their TemplateURL joins the root's asset parameters."""
    nested = {}
    for name, resource in template["Resources"].items():
        if resource["Type"] != "AWS::CloudFormation::Stack":
            continue
        url = _resolve(resource["Properties"]["TemplateURL"], parameters)
        nested[name] = _fetch(url)
    return nested


def _resolve(node, parameters: dict[str, str]) -> str:
    """Fn::Join / Fn::Select / Fn::Split / Ref over the stack's parameters and pseudo parameters."""
    pseudo = {"AWS::Region": REGION, "AWS::URLSuffix": "amazonaws.com", "AWS::Partition": "aws",
              "AWS::AccountId": ACCOUNT}
    if isinstance(node, str):
        return node
    (fn, arg), = node.items()
    if fn == "Ref":
        return pseudo.get(arg) or parameters[arg]
    if fn == "Fn::Join":
        return arg[0].join(_resolve(part, parameters) for part in arg[1])
    if fn == "Fn::Select":
        return _resolve_list(arg[1], parameters)[int(arg[0])]
    raise ValueError(f"cannot resolve {fn} in a nested stack URL")


def _resolve_list(node, parameters) -> list[str]:
    (fn, arg), = node.items()
    if fn == "Fn::Split":
        return _resolve(arg[1], parameters).split(arg[0])
    raise ValueError(f"cannot resolve {fn} to a list")


def synthesize(config: dict) -> SynthesizedCluster:
    """Create, describe and delete one cluster from `config` through the project's backend."""
    from moto import mock_aws

    from stepcluster.clusters.parallelcluster import ParallelClusterBackend
    from stepcluster.clusters.parallelcluster_config import _reset_pcluster_clients
    from stepcluster.settings import Settings

    saved = dict(os.environ)
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION})
    for key in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        os.environ.pop(key, None)
    recorder = _Recorder()
    try:
        with mock_aws(), recorder.installed():
            _reset_pcluster_clients()
            config = _aws_world(config)
            boto3.client("ec2", region_name=REGION).create_key_pair(KeyName=f"stepcluster.{STACK}.run-1")
            recorder.take()  # the harness's own set-up calls
            import pcluster.lib as pc

            calls: dict[str, list[ApiCall]] = {}
            # Every validator once, for its calls (moto's answers make three of them fail).
            try:
                pc.create_cluster(cluster_name=CLUSTER, cluster_configuration=copy.deepcopy(config),
                                  region=REGION, dryrun=True)
            except Exception:  # noqa: BLE001 - DryrunOperationException, or the validators moto fails
                pass
            calls["validate"] = recorder.take()
            _reset_pcluster_clients()

            suppressed = [f"type:{v}" for v in SUPPRESSED_VALIDATORS]

            class Lib:  # pcluster.lib with the suppressions the harness needs
                def __getattr__(self, name):
                    function = getattr(pc, name)
                    if name != "create_cluster":
                        return function
                    return lambda **kw: function(**kw, suppress_validators=suppressed)

            settings = Settings(backend="parallelcluster", region=REGION, cluster_poll_seconds=1)
            backend = ParallelClusterBackend(settings, pcluster=Lib(), cluster_config=config)
            calls.update(lifecycle_calls(backend, recorder, CLUSTER))

            create_stack = next(c for c in calls["create"] if c.name == "cloudformation:CreateStack")
            template = _fetch(create_stack.params["TemplateURL"])
            parameters = {p["ParameterKey"]: p["ParameterValue"] for p in create_stack.params.get("Parameters", [])}
            nested = _nested_templates(template, parameters)
            tags = {t["Key"]: t["Value"] for t in create_stack.params.get("Tags", [])}
            return SynthesizedCluster(template, nested, tags, calls)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        _reset_pcluster_clients()
