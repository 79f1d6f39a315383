#!/usr/bin/env python3
"""What a template's cluster function policies would refuse the real cluster stacks.

The checks of tests/deployment as a report: for each config of the ParallelCluster matrix
(synthesized by pcluster's own code, ~10 s each) and for cfncluster 1.6.1's real template and
calls, the actions the given template's policy does not allow. Use it on an older template to
see what a change fixed:

    git show REV:template.yaml > /tmp/old.yaml
    .venv/bin/python scripts/iam_gaps.py --template /tmp/old.yaml
"""

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "functions")]

from cfnlint.decode import cfn_yaml  # noqa: E402

from deployment.cfncluster_stack import lifecycle, stack_resources  # noqa: E402
from deployment.iam import role_policy  # noqa: E402
from deployment.pcluster_stack import CLUSTER, synthesize  # noqa: E402
from deployment.permissions import call_needs, stack_needs  # noqa: E402
from deployment.test_parallelcluster_stack import MATRIX  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--template", default=str(ROOT / "template.yaml"))
    args = parser.parse_args()
    template = json.loads(json.dumps(cfn_yaml.load(args.template)))
    modes = "ParallelClusterIamMode" in template["Parameters"]
    missing = collections.defaultdict(set)
    for name, (build, mode) in MATRIX.items():
        parameters = {"ClusterBackend": "parallelcluster", **({"ParallelClusterIamMode": mode} if modes else {})}
        policy = role_policy(template, "ParallelClusterFunctionRole", parameters)
        cluster = synthesize(build())
        needs = stack_needs(cluster.resources(), cluster.stack_tags, CLUSTER).needs + [
            n for phase, calls in cluster.calls.items() for n in call_needs(calls, cluster.stack_tags, phase)]
        for need in needs:
            if not policy.allows(need.action, need.resource, need.context):
                missing[need.action].add(name)
    print(f"parallelcluster: {len(missing)} actions refused")
    for action in sorted(missing):
        print(f"  {action}: {', '.join(sorted(missing[action]))}")
    policy = role_policy(template, "ClusterFunctionRole", {"ClusterBackend": "cfncluster"})
    run = lifecycle(Path(tempfile.mkdtemp()))
    needs = stack_needs(stack_resources(), run.stack_tags, "cfncluster-synth").needs + [
        n for phase, calls in run.calls.items() for n in call_needs(calls, run.stack_tags, phase)]
    refused = sorted({n.action for n in needs if not policy.allows(n.action, n.resource, n.context)})
    print(f"cfncluster: {len(refused)} actions refused")
    for action in refused:
        print(f"  {action}")
    return 1 if missing or refused else 0


if __name__ == "__main__":
    sys.exit(main())
