"""cfncluster 1.6.1's stack and calls, for the permission check.

The stack: the resources of cfncluster's real template (recorded from aws-parallelcluster
v1.6.1, see tests/fixtures/cfncluster/record_template_resources.py). Its resources exist under
conditions a user's cfncluster config switches on (a compute subnet, an EBS volume, a public
IP...), so every one of them counts, except the launch configuration that only GovCloud uses.

The calls: the project's cfncluster backend runs cfncluster's own code through a create,
status, delete and deletion-status under moto, with the stand-in stack template the local
runs use (cfncluster reads the template from S3; moto cannot create the real one), every AWS
call recorded.
"""

from __future__ import annotations

import json
import os
import types
from dataclasses import dataclass
from pathlib import Path

import boto3

from .template import REGION
from .recording import ApiCall, Recorder, lifecycle_calls

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cfncluster"
RESOURCES = FIXTURES / "cfncluster-1.6.1-resources.json"
#: Conditions no deployment in a commercial region turns on.
NOT_HERE = {"GovCloudRegion"}


def real_template() -> dict:
    return json.loads(RESOURCES.read_text())


def stack_resources():
    """(None, logical id, resource) of each resource of the real stack a run may create."""
    for logical, resource in real_template()["resources"].items():
        if resource.get("Condition") not in NOT_HERE:
            yield None, logical, resource


@dataclass
class CfnclusterLifecycle:
    calls: dict[str, list[ApiCall]]
    stack_tags: dict[str, str]


def lifecycle(tmp_path: Path) -> CfnclusterLifecycle:
    """create -> status -> delete -> deletion status of one cluster, every AWS call recorded."""
    from moto import mock_aws

    from stepcluster.clusters.cfncluster import CfnClusterBackend
    from stepcluster.local.cfncluster_standin import install_standin

    saved = dict(os.environ)
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": REGION, "MOTO_EC2_LOAD_DEFAULT_AMIS": "false"})
    recorder = Recorder()
    try:
        with mock_aws(), recorder.installed():
            s3, ec2 = boto3.client("s3", region_name=REGION), boto3.client("ec2", region_name=REGION)
            standin = install_standin(s3, ec2, bucket="stepcluster-templates")
            text = (FIXTURES / "user.config.in").read_text()
            for placeholder, value in {"@REGION@": REGION, "@TEMPLATE_URL@": standin["template_url"],
                                       "@VPC_ID@": standin["vpc_id"], "@SUBNET_ID@": standin["subnet_id"]}.items():
                text = text.replace(placeholder, value)
            config = tmp_path / "cfncluster.config"
            config.write_text(text)
            recorder.take()  # the harness's own set-up
            settings = types.SimpleNamespace(region=REGION, cluster_poll_seconds=1, create_timeout_seconds=3600,
                                             use_public_address=False, head_node_port=22,
                                             head_node_host_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIStandIn")
            backend = CfnClusterBackend(settings, config_path=str(config))
            calls = lifecycle_calls(backend, recorder, "synth")
            create = next(c for c in calls["create"] if c.name == "cloudformation:CreateStack")
            return CfnclusterLifecycle(calls, {t["Key"]: t["Value"] for t in create.params.get("Tags", [])})
    finally:
        os.environ.clear()
        os.environ.update(saved)
