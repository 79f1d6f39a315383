"""The IAM a deployed stack's role holds, and whether it allows a call.

`role_policy(template, "ParallelClusterFunctionRole", parameters)` resolves template.yaml the
way CloudFormation would for those parameter values (Conditions, Fn::If, Ref, Fn::Sub,
Fn::GetAtt with stand-in physical names) and gathers every statement the role ends up with: its
inline policies, the stack's managed policies it attaches, and the AWS::IAM::Policy resources
that name it. `RolePolicy.allows(action, resource, context)` evaluates them as IAM does for
identity policies that only Allow: the action and the resource must match an Allow statement,
and every condition of that statement must hold for the request context.

Only the condition operators the template uses are understood; any other raises, so a new
operator cannot be silently treated as "true".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .template import REGION, Resolver

# ---------------------------------------------------------------------------- statements
def _glob(pattern: str, text: str, *, case: bool) -> bool:
    """IAM's wildcards: * any run, ? one character, nothing else special."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, text, 0 if case else re.IGNORECASE) is not None


def _as_tuple(value) -> tuple:
    return tuple(value) if isinstance(value, list) else (value,)


_OPERATORS = {
    "StringEquals": lambda have, want: have == want,
    "StringNotEquals": lambda have, want: have != want,
    "StringLike": lambda have, want: _glob(want, have, case=True),
    "StringNotLike": lambda have, want: not _glob(want, have, case=True),
    "ArnLike": lambda have, want: _glob(want, have, case=True),
    "ArnEquals": lambda have, want: have == want,
    "Bool": lambda have, want: str(have).lower() == str(want).lower(),
}


@dataclass(frozen=True)
class Statement:
    sid: str | None
    policy: str                  # which policy it comes from (logical id or inline name)
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    conditions: dict = field(default_factory=dict)

    def matches(self, action: str, resource: str) -> bool:
        return (any(_glob(a, action, case=False) for a in self.actions)
                and any(_glob(r, resource, case=True) or r == "*" for r in self.resources))

    def conditions_hold(self, context: dict) -> bool:
        keys = {k.lower(): v for k, v in context.items()}
        for operator, tests in self.conditions.items():
            if_exists = operator.endswith("IfExists")
            base = operator[: -len("IfExists")] if if_exists else operator
            for key, wanted in tests.items():
                have = keys.get(key.lower())
                if have is None and re.match(r"[a-z0-9-]+:ResourceTag/", key) and not key.startswith("aws:"):
                    # EC2 evaluates ec2:ResourceTag/K as it does aws:ResourceTag/K.
                    have = keys.get("aws:" + key.split(":", 1)[1].lower())
                wanted = _as_tuple(wanted)
                if base == "Null":
                    if not any((have is None) == (str(w).lower() == "true") for w in wanted):
                        return False
                    continue
                if base not in _OPERATORS:
                    raise ValueError(f"condition operator {operator} is not understood by this evaluator")
                if have is None:
                    if if_exists:
                        continue
                    return False
                negative = base.startswith("StringNot")
                values = _as_tuple(have)
                test = _OPERATORS[base]
                if negative:
                    if not all(test(h, w) for h in values for w in wanted):
                        return False
                elif not any(test(h, w) for h in values for w in wanted):
                    return False
        return True

    def allows(self, action: str, resource: str, context: dict) -> bool:
        return self.matches(action, resource) and self.conditions_hold(context)


@dataclass
class RolePolicy:
    role: str
    statements: list[Statement]

    def allows(self, action: str, resource: str = "*", context: dict | None = None) -> bool:
        context = {"aws:RequestedRegion": REGION, **(context or {})}
        return any(s.allows(action, resource, context) for s in self.statements)

    def granting(self, action: str, resource: str = "*", context: dict | None = None) -> list[Statement]:
        context = {"aws:RequestedRegion": REGION, **(context or {})}
        return [s for s in self.statements if s.allows(action, resource, context)]


def statements_of(document: dict, policy: str) -> list[Statement]:
    found = []
    for raw in _as_tuple(document.get("Statement", [])):
        if raw.get("Effect") != "Allow" or "NotAction" in raw or "NotResource" in raw:
            raise ValueError(f"{policy}: only Allow statements with Action and Resource are evaluated here: {raw}")
        found.append(Statement(raw.get("Sid"), policy, _as_tuple(raw["Action"]),
                               tuple(r for r in _as_tuple(raw["Resource"])),
                               raw.get("Condition") or {}))
    return found


def role_policy(template: dict, role: str, parameters: dict[str, str] | None = None) -> RolePolicy:
    """Every statement `role` holds in a stack deployed with these parameter values."""
    resolve = Resolver(template, parameters)
    if not resolve.exists(role):
        raise KeyError(f"{role} does not exist with these parameters")
    resources = template["Resources"]
    properties = resolve.value(resources[role]["Properties"])
    statements = []
    for entry in properties.get("ManagedPolicyArns", []):
        if entry in resources and resolve.exists(entry):
            document = resolve.value(resources[entry]["Properties"]["PolicyDocument"])
            statements += statements_of(document, entry)
    for inline in properties.get("Policies", []):
        statements += statements_of(inline["PolicyDocument"], inline["PolicyName"])
    # Policies that name the role themselves (AWS::IAM::Policy, or a managed policy's Roles).
    for logical, resource in resources.items():
        if resource["Type"] not in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy") or not resolve.exists(logical):
            continue
        attached = resolve.value(resource["Properties"])
        if role in attached.get("Roles", []):
            statements += statements_of(attached["PolicyDocument"], logical)
    return RolePolicy(role, statements)
