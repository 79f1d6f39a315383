"""What a local run (and the tests) need to drive cfncluster's REAL code against moto.

cfncluster 1.6.1 creates the stack `cfncluster-NAME` from a template URL (`template_url` in the
config). The real template builds a whole cluster; moto cannot, so the local run points
`template_url` at a stand-in uploaded to moto's S3:

* it declares every parameter cfncluster 1.6.1 may pass (so any config it accepts works),
* it creates one cheap resource, `MasterServer` (a moto EC2 instance in the given subnet), which
  is where the backend looks for the head node's console output,
* its outputs are the real template's keys: MasterPrivateIP, MasterPublicIP (when
  use_public_ips is true, the default) and ClusterUser, pointing at the local head node
  (127.0.0.1, user hpc: the one scripts/local-cluster.sh brings up); the stack parameter
  Scheduler is whatever the config says.

moto's console output never carries an SSH host key, so a local run sets the settings'
`head_node_host_key` to the local head node's key (the backend's documented fallback).

Failing creations: moto never fails a stack by itself the way CloudFormation does (a resource
failing minutes in, then a rollback). `install_standin(..., fail_reason="...")` uploads a variant
whose stacks are marked failed as soon as moto creates them: MasterServer CREATE_FAILED with
that reason, then ROLLBACK_COMPLETE, the events CloudFormation would record. That needs moto
running in this process (`mock_aws`), not a moto server. `fail_stack` does the same to any
existing stack.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["STANDIN_TEMPLATE", "fail_stack", "install_standin", "standin_template",
           "write_local_cfncluster_config"]

MARKER = "StepclusterStandin"

# Every parameter cfncluster 1.6.1's cfnconfig/create can pass, with the real template's
# defaults. KeyName, VPCId, MasterSubnetId and AvailabilityZone have none (always passed).
_PARAMETERS = {
    "CLITemplate": "default", "KeyName": None, "AvailabilityZone": None,
    "ComputeWaitConditionCount": "2",
    # [vpc NAME]
    "VPCId": None, "MasterSubnetId": None, "ComputeSubnetCidr": "NONE", "ComputeSubnetId": "NONE",
    "UsePublicIps": "true", "AccessFrom": "0.0.0.0/0", "AdditionalSG": "NONE",
    "VPCSecurityGroupId": "NONE",
    # [cluster NAME] (cluster_user -> ClusterUser is not declared by the real template either)
    "MasterInstanceType": "t2.micro", "ComputeInstanceType": "t2.micro", "InitialQueueSize": "2",
    "MaxQueueSize": "10", "MaintainInitialSize": "false", "Scheduler": "sge",
    "ClusterType": "ondemand", "EphemeralDir": "/scratch", "SpotPrice": "0.00",
    "CustomAMI": "NONE", "PreInstallScript": "NONE", "PreInstallArgs": "NONE",
    "PostInstallScript": "NONE", "PostInstallArgs": "NONE", "ProxyServer": "NONE",
    "Placement": "cluster", "PlacementGroup": "NONE", "EncryptedEphemeral": "false",
    "S3ReadResource": "NONE", "S3ReadWriteResource": "NONE", "SharedDir": "/shared",
    "Tenancy": "default", "EphemeralKMSKeyId": "NONE", "ClusterReadyScript": "NONE",
    "MasterRootVolumeSize": "15", "ComputeRootVolumeSize": "15", "BaseOS": "alinux",
    "EC2IAMRoleName": "NONE", "ExtraJson": "{}", "CustomChefCookbook": "NONE",
    "CustomChefRunList": "NONE", "AdditionalCfnTemplate": "NONE",
    # [ebs NAME]
    "EBSSnapshotId": "NONE", "VolumeType": "gp2", "VolumeSize": "20", "EBSKMSKeyId": "NONE",
    "VolumeIOPS": "100", "EBSEncryption": "false", "EBSVolumeId": "NONE",
    # [scaling NAME]
    "ScaleDownIdleTime": "10",
}


def standin_template(*, head_node_host: str = "127.0.0.1", user: str = "hpc",
                     fail_reason: str | None = None) -> str:
    """The stand-in template (JSON) whose outputs name `head_node_host` and `user`."""
    parameters = {}
    for name, default in _PARAMETERS.items():
        parameters[name] = {"Type": "String"} if default is None else {"Type": "String",
                                                                         "Default": default}
    parameters["Scheduler"]["AllowedValues"] = ["sge", "torque", "slurm", "custom"]
    parameters["UsePublicIps"]["AllowedValues"] = ["true", "false"]
    template = {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": "stepcluster local stand-in for the cfncluster 1.6 template (moto only)",
        "Parameters": parameters,
        "Conditions": {"MasterPublicIp": {"Fn::Equals": [{"Ref": "UsePublicIps"}, "true"]}},
        "Resources": {
            # Not a WaitConditionHandle: moto's describe_stack_resource crashes on one.
            "MasterServer": {
                "Type": "AWS::EC2::Instance",
                "Properties": {"ImageId": "ami-12345678",
                               "InstanceType": {"Ref": "MasterInstanceType"},
                               "KeyName": {"Ref": "KeyName"},
                               "SubnetId": {"Ref": "MasterSubnetId"}},
            },
        },
        "Outputs": {
            "ClusterUser": {"Value": user},
            "MasterPrivateIP": {"Value": head_node_host},   # real: MasterServer.PrivateIp
            "MasterPublicIP": {"Condition": "MasterPublicIp", "Value": head_node_host},
        },
    }
    if fail_reason:
        template["Metadata"] = {MARKER: {"FailReason": fail_reason,
                                         "FailedResource": "MasterServer"}}
    return json.dumps(template, indent=1)


#: The stand-in for the local head node (127.0.0.1, user hpc).
STANDIN_TEMPLATE = standin_template()


def _ensure_bucket(s3_client, bucket: str) -> None:
    region = s3_client.meta.region_name
    kwargs = {"Bucket": bucket}
    if region and region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        s3_client.create_bucket(**kwargs)
    except s3_client.exceptions.BucketAlreadyOwnedByYou:
        pass


def install_standin(s3_client, ec2_client, *, bucket: str, head_node_host: str = "127.0.0.1",
                    user: str = "hpc", scheduler: str = "slurm",
                    fail_reason: str | None = None) -> dict:
    """Upload the stand-in to (moto's) S3 and make a VPC and subnet in (moto's) EC2.

    Returns {"template_url", "vpc_id", "subnet_id", "region", "scheduler", "bucket", "key",
    "fail_reason"} for `write_local_cfncluster_config`. With `fail_reason`, stacks made from
    this template fail (see the module's doc); the bucket name must not contain dots.
    """
    region = ec2_client.meta.region_name
    _ensure_bucket(s3_client, bucket)
    key = "stepcluster/cfncluster-standin" + ("-fail" if fail_reason else "") + ".json"
    body = standin_template(head_node_host=head_node_host, user=user, fail_reason=fail_reason)
    s3_client.put_object(Bucket=bucket, Key=key, Body=body.encode())
    vpc_id = ec2_client.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet_id = ec2_client.create_subnet(VpcId=vpc_id, CidrBlock="10.0.0.0/24")["Subnet"]["SubnetId"]
    ec2_client.create_tags(Resources=[vpc_id, subnet_id],
                           Tags=[{"Key": "Name", "Value": "stepcluster-local"}])
    if fail_reason:
        _arm_failure_hook(region)
    return {"template_url": f"https://{bucket}.s3.amazonaws.com/{key}", "vpc_id": vpc_id,
            "subnet_id": subnet_id, "region": region, "scheduler": scheduler, "bucket": bucket,
            "key": key, "fail_reason": fail_reason}


def write_local_cfncluster_config(path, standin: dict, *, key_name: str | None = None) -> str:
    """A cfncluster config using the stand-in (no key_name: the run provides its key)."""
    lines = ["# cfncluster config for a local run: the template is stepcluster's stand-in in moto",
             "[global]", "cluster_template = local", "update_check = false",
             "sanity_check = false", "",
             "[aws]", f"aws_region_name = {standin['region']}", "",
             "[cluster local]"]
    if key_name:
        lines.append(f"key_name = {key_name}")
    lines += [f"scheduler = {standin.get('scheduler', 'slurm')}",
              f"template_url = {standin['template_url']}", "vpc_settings = local", "",
              "[vpc local]", f"vpc_id = {standin['vpc_id']}",
              f"master_subnet_id = {standin['subnet_id']}", ""]
    Path(path).write_text("\n".join(lines), encoding="utf-8")
    return str(path)


# --------------------------------------------------------------------------------------------
# Failing a stack the way CloudFormation would (moto in this process only)


def _moto_stack(region: str, account: str, stack_id: str):
    from moto.cloudformation import cloudformation_backends

    backend = cloudformation_backends[account][region]
    for stack in backend.stacks.values():
        if stack.stack_id == stack_id or stack.name == stack_id:
            return stack
    raise LookupError(f"no live stack {stack_id} in moto ({account}, {region})")


def _fail_moto_stack(stack, reason: str, logical_id: str = "MasterServer") -> None:
    from moto.cloudformation.models import Event

    def event(logical, resource_type, status, why):
        stack.events.append(Event(stack_id=stack.stack_id, stack_name=stack.name,
                                  logical_resource_id=logical, physical_resource_id="",
                                  resource_type=resource_type, resource_status=status,
                                  resource_status_reason=why, resource_properties=None))

    resource_type = "AWS::EC2::Instance"
    template_resources = (getattr(stack, "template_dict", None) or {}).get("Resources") or {}
    if logical_id in template_resources:
        resource_type = template_resources[logical_id].get("Type", resource_type)
    event(logical_id, resource_type, "CREATE_FAILED", reason)
    event(stack.name, "AWS::CloudFormation::Stack", "ROLLBACK_IN_PROGRESS",
          f"The following resource(s) failed to create: [{logical_id}]. Rollback requested by user.")
    event(stack.name, "AWS::CloudFormation::Stack", "ROLLBACK_COMPLETE", None)
    stack.status = "ROLLBACK_COMPLETE"


def fail_stack(cfn_client, stack: str, reason: str, *, logical_id: str = "MasterServer") -> None:
    """Turn an existing moto stack into a failed creation: `logical_id` CREATE_FAILED with
    `reason`, then ROLLBACK_COMPLETE."""
    stack_id = cfn_client.describe_stacks(StackName=stack)["Stacks"][0]["StackId"]
    _, _, _, region, account, _ = stack_id.split(":", 5)
    _fail_moto_stack(_moto_stack(region, account, stack_id), reason, logical_id)


def _arm_failure_hook(region: str) -> None:
    """Make moto's CloudFormation (this region, this account) fail every stack created from a
    template carrying the stand-in's fail marker. The hook lives on moto's backend object, so
    it goes when the mock is reset."""
    import boto3
    from moto.cloudformation import cloudformation_backends

    account = boto3.client("sts", region_name=region).get_caller_identity()["Account"]
    backend = cloudformation_backends[account][region]
    if getattr(backend, "_stepcluster_standin_hook", False):
        return
    original = backend.create_stack

    def create_stack(*args, **kwargs):
        stack = original(*args, **kwargs)
        metadata = (getattr(stack, "template_dict", None) or {}).get("Metadata") or {}
        marker = metadata.get(MARKER) or {}
        if marker.get("FailReason"):
            _fail_moto_stack(stack, marker["FailReason"], marker.get("FailedResource", "MasterServer"))
        return stack

    backend.create_stack = create_stack
    backend._stepcluster_standin_hook = True
