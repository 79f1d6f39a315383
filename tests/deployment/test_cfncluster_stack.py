"""The cfncluster function's IAM grants what cfncluster 1.6.1's real stack and code need."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cfnlint.decode import cfn_yaml

from .cfncluster_stack import lifecycle, real_template, stack_resources
from .iam import role_policy
from .permissions import call_needs, refused, stack_needs

pytest.importorskip("cfncluster")

ROOT = Path(__file__).resolve().parents[2]
ROLE = "ClusterFunctionRole"


@pytest.fixture(scope="module")
def policy():
    template = json.loads(json.dumps(cfn_yaml.load(str(ROOT / "template.yaml"))))
    return role_policy(template, ROLE, {"ClusterBackend": "cfncluster"})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return lifecycle(tmp_path_factory.mktemp("cfncluster"))


def test_the_recorded_template_is_cfncluster_1_6_1s():
    recorded = real_template()
    assert recorded["source"] == {"repository": "aws/aws-parallelcluster", "tag": "v1.6.1",
                                  "path": "cloudformation/cfncluster.cfn.json",
                                  "git_blob": "a9d064ebf77a613e35f252fb2a42b761e3d28c28"}
    kinds = {r["Type"] for _, _, r in stack_resources()}
    # Outside GovCloud its compute fleet launches from a launch template, not a configuration.
    assert "AWS::EC2::LaunchTemplate" in kinds and "AWS::AutoScaling::LaunchConfiguration" not in kinds


def test_the_function_may_create_and_delete_every_resource_of_the_stack(policy, run):
    needs = stack_needs(stack_resources(), run.stack_tags, "cfncluster-synth").needs
    missing = refused(policy, needs)
    assert not missing, "the cfncluster function may not\n  " + "\n  ".join(missing)


def test_the_function_may_make_every_call_cfncluster_makes(policy, run):
    needs = [n for phase, calls in run.calls.items() for n in call_needs(calls, run.stack_tags, phase)]
    assert {"create", "delete"} <= {n.why.split(":")[0] for n in needs}
    missing = refused(policy, needs)
    assert not missing, "cfncluster's calls refused\n  " + "\n  ".join(missing)
