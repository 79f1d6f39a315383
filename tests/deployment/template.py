"""template.yaml as CloudFormation resolves it for one set of parameter values.

`Resolver(template, {"ClusterBackend": "parallelcluster"})` evaluates Conditions, Fn::If, Ref,
Fn::Sub, Fn::GetAtt (with stand-in physical names), Fn::Join/Select/Split and the Rules'
functions, so tests can ask what a deployment holds: which resources exist, what a policy
document says, which Rules refuse the values.
"""

from __future__ import annotations

import re

REGION = "us-east-1"
ACCOUNT = "123456789012"
STACK = "mystack"
#: The name CloudFormation gives the state machine (SAM names it from the logical id).
STATE_MACHINE_NAME = "JobsStateMachine-a1B2c3D4e5F6"
STATE_MACHINE_ARN = f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:{STATE_MACHINE_NAME}"
PSEUDO = {"AWS::Partition": "aws", "AWS::Region": REGION, "AWS::AccountId": ACCOUNT,
          "AWS::StackName": STACK, "AWS::URLSuffix": "amazonaws.com",
          "AWS::StackId": f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/{STACK}/0a1b2c3d"}
_NO_VALUE = object()


def execution_arn(name: str = "run-1") -> str:
    """An execution of this stack's state machine."""
    return f"arn:aws:states:{REGION}:{ACCOUNT}:execution:{STATE_MACHINE_NAME}:{name}"


def _physical_arn(template: dict, logical: str, attribute: str) -> str:
    """Fn::GetAtt of the stack's own resources, with stand-in physical names."""
    kind = template["Resources"][logical]["Type"]
    if (kind, attribute) in (("AWS::Serverless::StateMachine", "Name"),
                             ("AWS::StepFunctions::StateMachine", "Name")):
        return STATE_MACHINE_NAME
    if attribute != "Arn":
        return f"{logical}.{attribute}"
    return {
        "AWS::S3::Bucket": f"arn:aws:s3:::{STACK}-{logical.lower()}-0a1b2c3d",
        "AWS::Logs::LogGroup": f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{STACK}-{logical}-0a1b2c3d:*",
        "AWS::IAM::Role": f"arn:aws:iam::{ACCOUNT}:role/{STACK}-{logical}-0a1b2c3d",
        "AWS::Serverless::Function": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{STACK}-{logical}-0a1b2c3d",
        "AWS::Serverless::StateMachine": STATE_MACHINE_ARN,
    }.get(kind, f"arn:aws:stand-in:::{logical}")


class Resolver:
    """Template values for one set of parameter values."""

    def __init__(self, template: dict, parameters: dict[str, str] | None = None):
        self.template = template
        given = parameters or {}
        self.values = {}
        for name, spec in template.get("Parameters", {}).items():
            raw = str(given.get(name, spec.get("Default", "")))
            self.values[name] = raw.split(",") if spec["Type"] == "CommaDelimitedList" else raw
        unknown = set(given) - set(self.values)
        if unknown:
            raise KeyError(f"not parameters of the template: {sorted(unknown)}")
        self._conditions: dict[str, bool] = {}

    def condition(self, name: str | None) -> bool:
        if name is None:
            return True
        if name not in self._conditions:
            self._conditions[name] = bool(self.value(self.template["Conditions"][name]))
        return self._conditions[name]

    def exists(self, logical: str) -> bool:
        return self.condition(self.template["Resources"][logical].get("Condition"))

    def value(self, node):
        if isinstance(node, list):
            return [v for v in (self.value(n) for n in node) if v is not _NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) != 1 or not next(iter(node)).startswith(("Fn::", "Ref", "Condition")):
            return {k: v for k, v in ((k, self.value(v)) for k, v in node.items()) if v is not _NO_VALUE}
        (fn, arg), = node.items()
        if fn == "Ref":
            if arg == "AWS::NoValue":
                return _NO_VALUE
            if arg in PSEUDO:
                return PSEUDO[arg]
            if arg in self.values:
                return self.values[arg]
            return arg  # a resource: its logical id stands for its physical id
        if fn == "Condition":
            return self.condition(arg)
        if fn == "Fn::If":
            condition, yes, no = arg
            return self.value(yes if self.condition(condition) else no)
        if fn == "Fn::Sub":
            text, names = (arg, {}) if isinstance(arg, str) else (arg[0], self.value(arg[1]))
            return re.sub(r"\$\{([^}!][^}]*)\}", lambda m: self._sub(m[1], names), text).replace("${!", "${")
        if fn == "Fn::GetAtt":
            logical, attribute = arg if isinstance(arg, list) else arg.split(".", 1)
            return _physical_arn(self.template, logical, attribute)
        args = self.value(arg)
        return {
            "Fn::Equals": lambda: args[0] == args[1],
            "Fn::Not": lambda: not args[0],
            "Fn::And": lambda: all(args),
            "Fn::Or": lambda: any(args),
            "Fn::EachMemberEquals": lambda: all(item == args[1] for item in args[0]),
            "Fn::Join": lambda: args[0].join(args[1]),
            "Fn::Select": lambda: args[1][int(args[0])],
            "Fn::Split": lambda: args[1].split(args[0]),
        }[fn]()

    def _sub(self, name: str, names: dict) -> str:
        if name in names:
            return names[name]
        if name in PSEUDO:
            return PSEUDO[name]
        if name in self.values:
            value = self.values[name]
            return ",".join(value) if isinstance(value, list) else value
        if "." in name:
            logical, attribute = name.split(".", 1)
            return _physical_arn(self.template, logical, attribute)
        return name  # a resource's Ref
