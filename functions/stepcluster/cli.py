"""The `stepcluster` command: a workflow checked, drawn, run here or on a deployed stack, followed.

validate, graph, preprocess, run-local, cleanup; and for a deployed stack: start, status,
executions, results, logs.

Exit codes: 0 success; 1 the run failed (run-local), or the cleanup function failed (cleanup);
2 bad input (config, options, missing local cluster, no such stack or execution); 130
interrupted (Ctrl-C). Problems are printed one per line on stderr, never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from stepcluster.config import load_jobs_config
from stepcluster.errors import ConfigError, InputError, StepclusterError

EXIT_OK, EXIT_RUN_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


def _print_problems(exc: ConfigError) -> None:
    for warning in getattr(exc, "warnings", ()):
        print(warning, file=sys.stderr)
    for problem in exc.problems:
        print(problem, file=sys.stderr)


def cmd_validate(args) -> int:
    try:
        config = load_jobs_config(args.config)
    except ConfigError as exc:
        _print_problems(exc)
        print(f"{args.config}: {len(exc.problems)} problem(s)", file=sys.stderr)
        return EXIT_BAD_INPUT
    for warning in config.warnings:
        print(warning, file=sys.stderr)
    if args.scheduler:
        from stepcluster import jobrequests
        from stepcluster.schedulers import get_scheduler

        errors, warnings = jobrequests.check_config(config, get_scheduler(args.scheduler))
        for problem in warnings + errors:
            print(problem, file=sys.stderr)
        if errors:
            print(f"{args.config}: {len(errors)} problem(s) for {args.scheduler}", file=sys.stderr)
            return EXIT_BAD_INPUT
    print(config.summary())
    return EXIT_OK


def cmd_graph(args) -> int:
    """A picture of the workflow (`tools/drawing.py`), coloured by a run's final states."""
    from stepcluster.tools import drawing

    try:
        config = load_jobs_config(args.config)
    except ConfigError as exc:
        _print_problems(exc)
        return EXIT_BAD_INPUT
    states = None
    if args.execution:
        states = drawing.states_from_manifest(_read_manifest(args.execution))
    fmt = args.output.suffix.lstrip(".").lower()
    data = drawing.render(config, fmt, states)
    args.output.write_bytes(data)
    print(f"{args.output}: {len(config.jobs)} jobs ({len(data):,} bytes)")
    return EXIT_OK


def _read_manifest(where: str) -> dict:
    """A run's manifest: a local file (run-local's --artifacts-dir), or s3://BUCKET/KEY."""
    try:
        if where.startswith("s3://"):
            import boto3

            bucket, _, key = where[5:].partition("/")
            return json.loads(boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read())
        return json.loads(Path(where).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the manifest {where}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - botocore's errors: no credentials, no such key
        raise InputError(f"cannot read the manifest {where}: {type(exc).__name__}: {exc}") from None


def cmd_preprocess(args) -> int:
    from stepcluster import preprocess

    try:
        result = preprocess.preprocess(args.config, plan_dir=args.plan_dir, samconfig=args.samconfig,
                                       backend=args.backend, cluster_config=args.cluster_config,
                                       packages_bucket=args.packages_bucket,
                                       parallelcluster_iam=args.parallelcluster_iam,
                                       use_public_address=args.use_public_address,
                                       vpc_subnet_ids=args.vpc_subnet_ids,
                                       vpc_security_group_ids=args.vpc_security_group_ids,
                                       check_network=not args.no_network_check)
    except ConfigError as exc:
        _print_problems(exc)
        return EXIT_BAD_INPUT
    for warning in result.warnings:
        print(warning, file=sys.stderr)
    print(result.describe())
    return EXIT_OK


def cmd_run_local(args) -> int:
    from stepcluster.local.runner import run_local

    from stepcluster.local.parameters import settings_from_overrides

    progress = (lambda line: print(line, file=sys.stderr)) if args.json else print
    if args.resume and not args.artifacts_dir:
        print("stepcluster: --resume reads the earlier run's manifest from --artifacts-dir (the folder "
              "that run wrote its results to): give it", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        overrides = settings_from_overrides(args.parameter_overrides or [])
        report = run_local(args.config, args.cluster_name, scheduler=args.scheduler,
                           backend=args.backend, progress=progress, timeout=args.timeout,
                           s3_dir=args.s3_dir, artifacts_dir=args.artifacts_dir, staging=args.staging,
                           resume=args.resume, max_hours=args.max_hours,
                           settings_overrides=overrides)
    except ConfigError as exc:
        _print_problems(exc)
        return EXIT_BAD_INPUT
    except FileNotFoundError as exc:
        print(f"stepcluster: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    _print_report(report, args.json)
    if args.artifacts_dir and not args.json:
        print(f"results: {args.artifacts_dir}/<execution>/<job>/ (stdout, stderr, exit_code, output/)")
    if report.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if report.status == "SUCCEEDED" else EXIT_RUN_FAILED


def _print_report(report, as_json: bool) -> None:
    """A run's report, the same for run-local and start --follow: one JSON object, or a table."""
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
        return
    print()
    print(f"{report.status}" + (f": {report.error}: {report.cause}" if report.cause else ""))
    width = max([len(j["name"]) for j in report.jobs] + [4])
    print(f"{'job':<{width}}  {'id':>8}  {'state':<11} {'exit':>4}  started               ended")
    for job in report.jobs:
        exit_code = "" if job["exit_code"] is None else job["exit_code"]
        note = f"  (from {job['resumed_from']})" if job.get("resumed_from") else \
            f"  ({job['attempts']} attempts)" if job.get("attempts") else ""
        print(f"{job['name']:<{width}}  {job['job_id'] or '-':>8}  {job['state']:<11} {exit_code!s:>4}  "
              f"{job['started'] or '-':<20}  {job['ended'] or '-'}{note}")
    print("counts: " + ", ".join(f"{k}={v}" for k, v in report.counts.items()))
    if report.usage:
        print("usage: " + _usage_line(report.usage))


def _usage_line(used: dict) -> str:
    parts = [f"{used.get('lambda_invocations', 0)} Lambda calls"]
    if used.get("lambda_gb_seconds") is not None:
        parts[-1] += f" ({used['lambda_gb_seconds']} GB-s)"
    if used.get("ssh_connections"):
        parts.append(f"{used['ssh_connections']} SSH connections")
    if used.get("cluster_seconds") is not None:
        parts.append(f"cluster {used['cluster_seconds']} s")
    if used.get("instance_hours"):
        parts.append("instances " + ", ".join(f"{kind} {hours} h" for kind, hours in used["instance_hours"].items()))
    if used.get("jobs_elapsed_seconds") is not None:
        parts.append(f"jobs {used['jobs_elapsed_seconds']} s, {used.get('jobs_core_hours', 0)} core-hours")
    estimate = used.get("estimate") or {}
    parts.append(f"estimate ${estimate['usd']}" if estimate.get("usd") is not None else
                 f"no estimate ({estimate.get('note', 'no price table')})")
    return ", ".join(parts)


def _runs(args):
    from stepcluster.tools.client import Runs

    return Runs.of_stack(args.stack, args.region)


def cmd_start(args) -> int:
    """Start a run of a deployed stack; with --follow, print its progress and report as run-local does."""
    from stepcluster.tools.client import execution_input

    runs = _runs(args)
    value = execution_input(args.cluster_name, keep_cluster=args.keep_cluster, resume=args.resume,
                            max_hours=args.max_hours)
    arn = runs.start(value, name=args.name)
    out = sys.stderr if args.json else sys.stdout
    print(f"execution {arn.rsplit(':', 1)[-1]} started: {runs.console_url(arn)}", file=out)
    if not args.follow:
        if args.json:
            print(json.dumps({"execution_arn": arn, "console_url": runs.console_url(arn)}))
        return EXIT_OK
    follower = runs.follower(arn, lambda line: print(line, file=out))
    described = runs.follow(follower)
    report = runs.report(described, follower, _plan_names(runs, described))
    _print_report(report, args.json)
    return EXIT_OK if report.status == "SUCCEEDED" else EXIT_RUN_FAILED


def _plan_names(runs, described) -> list[str]:
    """The run's jobs in the plan's order: its manifest's (the functions hold the plan)."""
    manifest = runs.manifest(described["executionArn"]) or {}
    output = json.loads(described.get("output") or "{}")
    return list((manifest.get("jobs") or {}) or (output.get("jobs") or {}))


def cmd_status(args) -> int:
    status = _runs(args).status(args.execution)
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(f"{status['execution']}: {status['status']} (started {status['started']}, "
              f"ended {status['stopped'] or '-'})")
        if status["cause"]:
            print(f"{status['error']}: {status['cause']}")
        print("jobs: " + (", ".join(f"{n} {s}" for s, n in status["jobs"].items()) or "none kept yet"))
        print(f"results: {status['results']}")
    return EXIT_OK


def cmd_executions(args) -> int:
    rows = _runs(args).executions(args.limit)
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    width = max([len(r["execution"]) for r in rows] + [9])
    print(f"{'execution':<{width}}  {'status':<9}  started               seconds  jobs  failed")
    for r in rows:
        print(f"{r['execution']:<{width}}  {r['status']:<9}  {r['started'] or '-':<20}  "
              f"{r['seconds'] if r['seconds'] is not None else '-':>7}  {r['jobs']:>4}  {r['failed']:>6}")
    return EXIT_OK


def cmd_results(args) -> int:
    written = _runs(args).results(args.execution, args.output, job=args.job)
    print(f"{len(written)} files into {args.output}/")
    return EXIT_OK


def cmd_logs(args) -> int:
    sys.stdout.buffer.write(_runs(args).log(args.execution, args.job, stderr=args.stderr, task=args.task))
    return EXIT_OK


def cmd_cleanup(args) -> int:
    """The abort cleanup of one execution, by hand: the local cluster's (a run-local execution)
    or, with --stack, a deployed stack's cluster function."""
    from stepcluster.cleanup_client import CleanupFailed

    try:
        if args.stack:
            local_only = [option for option, given in (
                ("--scheduler", args.scheduler), ("--artifacts-dir", args.artifacts_dir),
                ("--parameter-overrides", args.parameter_overrides)) if given]
            if local_only:
                print(f"stepcluster: {', '.join(local_only)}: only for a local cleanup (without --stack)",
                      file=sys.stderr)
                return EXIT_BAD_INPUT
            return _cleanup_deployed(args)
        if args.region:
            print("stepcluster: --region: only with --stack (a local cleanup is the local cluster's)",
                  file=sys.stderr)
            return EXIT_BAD_INPUT
        from stepcluster.local.parameters import settings_from_overrides
        from stepcluster.local.runner import cleanup_local

        result = cleanup_local(args.execution, scheduler=args.scheduler or "slurm", progress=print,
                               artifacts_dir=args.artifacts_dir,
                               settings_overrides=settings_from_overrides(args.parameter_overrides or []))
    except CleanupFailed as exc:
        print(f"stepcluster: the cleanup failed: {exc.message}", file=sys.stderr)
        return EXIT_RUN_FAILED
    except ConfigError as exc:
        _print_problems(exc)
        return EXIT_BAD_INPUT
    except FileNotFoundError as exc:
        print(f"stepcluster: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print("result: " + json.dumps(result, sort_keys=True))
    return EXIT_OK


def _cleanup_deployed(args) -> int:
    from botocore.exceptions import BotoCoreError, ClientError

    from stepcluster.cleanup_client import cleanup_deployed, describe_result

    try:
        done = cleanup_deployed(args.execution, args.stack, region=args.region)
    except (BotoCoreError, ClientError) as exc:   # no credentials, no access, no such region...
        print(f"stepcluster: cannot clean up through stack {args.stack!r}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    name = args.execution.rsplit(":", 1)[-1]
    print(f"cleanup of {name} by {done['function']} (stack {args.stack}), with the EventBridge rule's event:")
    for line in describe_result(done["result"], execution=name, bucket=done["artifacts_bucket"]):
        print(f"  {line}")
    print("result: " + json.dumps(done["result"], sort_keys=True))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stepcluster", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check a jobs config; exit 2 with every problem if invalid")
    p.add_argument("config")
    p.add_argument("--scheduler", choices=["slurm", "sge", "torque"], default=None,
                   help="also check the resource keys, and the directives of local_path handlers, "
                        "for this scheduler")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("graph", help="draw the workflow: jobs, what each asks for, who waits for whom")
    p.add_argument("config")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="the picture: .svg, .png or .pdf (Graphviz), .mmd (Mermaid text) or .dot")
    p.add_argument("--execution", default=None, metavar="MANIFEST",
                   help="colour each job by its final state in this run: its manifest.json (a "
                        "file, e.g. in run-local's --artifacts-dir, or s3://BUCKET/EXECUTION/manifest.json)")
    p.set_defaults(func=cmd_graph)

    p = sub.add_parser("preprocess", help="compile a jobs config into what `sam build && sam deploy` ship")
    p.add_argument("config")
    p.add_argument("--plan-dir", type=Path, default=None,
                   help="where to write the plan (default: functions/plan in this checkout)")
    p.add_argument("--samconfig", type=Path, default=None,
                   help="samconfig.toml to update (default: the one in this checkout)")
    p.add_argument("--backend", choices=["existing", "parallelcluster", "cfncluster"], default="existing",
                   help="where the cluster comes from (default: an existing head node)")
    p.add_argument("--packages-bucket", default=None, metavar="BUCKET|auto",
                   help="upload local_path packages to this bucket (auto: the deployed stack's "
                        "artifacts bucket) instead of bundling them with the functions")
    p.add_argument("--cluster-config", type=Path, default=None,
                   help="ParallelCluster 3 YAML, or the cfncluster INI `cfncluster configure` writes")
    # Deployment parameters, written into samconfig.toml (not given: the value already there).
    p.add_argument("--parallelcluster-iam", choices=["base", "privileged"], default=None,
                   help="ParallelClusterIamMode: AWS ParallelCluster's base IAM mode (the cluster "
                        "config names pre-made roles) or privileged (pcluster creates them); "
                        "default: samconfig.toml's, else base")
    p.add_argument("--use-public-address", choices=["true", "false"], default=None,
                   help="UsePublicAddress: SSH to a created cluster's public address instead of "
                        "its private one")
    p.add_argument("--vpc-subnet-ids", default=None, metavar="subnet-a,subnet-b",
                   help="VpcSubnetIds: subnets for the functions that SSH to the head node ('' clears)")
    p.add_argument("--vpc-security-group-ids", default=None, metavar="sg-...",
                   help="VpcSecurityGroupIds: their security groups ('' clears)")
    p.add_argument("--no-network-check", action="store_true",
                   help="do not ask EC2 whether the subnets reach Secrets Manager and S3")
    p.set_defaults(func=cmd_preprocess)

    p = sub.add_parser("run-local", help="run the real definition here, on the local cluster")
    p.add_argument("config")
    p.add_argument("--cluster-name", required=True)
    p.add_argument("--scheduler", choices=["slurm", "sge"], default="slurm")
    p.add_argument("--backend", choices=["existing", "cfncluster"], default="existing",
                   help="existing: the local head node as it is; cfncluster: cfncluster's own code "
                        "against moto, with a stand-in stack whose head node is the local one")
    p.add_argument("--json", action="store_true", help="print one JSON report on stdout")
    p.add_argument("--s3-dir", type=Path, default=None,
                   help="a folder standing in for S3: its first level are buckets, below are keys")
    p.add_argument("--staging", choices=["ssh", "head-node"], default="ssh",
                   help="ssh: job files go through the functions; head-node: it downloads them")
    p.add_argument("--artifacts-dir", type=Path, default=None,
                   help="after the run, write what it kept in the artifacts bucket here (same keys)")
    p.add_argument("--timeout", type=float, default=3600, help="give up after this many seconds")
    p.add_argument("--max-hours", type=float, default=None, metavar="HOURS",
                   help="the run's budget: past this since it started, its jobs are cancelled, "
                        "their results kept, and it fails saying so")
    p.add_argument("--resume", default=None, metavar="EXECUTION",
                   help="do not run again what this earlier execution finished (its manifest is read "
                        "from --artifacts-dir)")
    p.add_argument("--parameter-overrides", nargs="+", metavar="KEY=VALUE",
                   help="template parameters, as `sam deploy` takes them (BlockedJobTimeoutSeconds=20 "
                        "ClusterPollSeconds=5 ...): checked against template.yaml's constraints")
    p.set_defaults(func=cmd_run_local)

    def deployed(name, help_text):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--stack", required=True, help="the deployed stack (sam deploy's stack name)")
        p.add_argument("--region", default=None)
        return p

    p = deployed("start", "start a run of a deployed stack (its console URL; --follow: progress and report)")
    p.add_argument("--cluster-name", required=True)
    p.add_argument("--keep-cluster", action="store_true", help="keep the cluster after a success")
    p.add_argument("--resume", default=None, metavar="EXECUTION",
                   help="do not run again what this earlier execution finished")
    p.add_argument("--max-hours", type=float, default=None, metavar="HOURS",
                   help="the run's budget: past it, its jobs are cancelled and it fails saying so")
    p.add_argument("--name", default=None, help="the execution's name (default: Step Functions')")
    p.add_argument("--follow", action="store_true", help="print progress until it ends, then its report")
    p.add_argument("--json", action="store_true", help="with --follow: one JSON report on stdout")
    p.set_defaults(func=cmd_start)
    p = deployed("status", "an execution's status, its jobs by state and where its results are")
    p.add_argument("execution", metavar="EXECUTION", help="its name or ARN")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
    p = deployed("executions", "the stack's recent runs: status, start, duration, failed jobs")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_executions)
    p = deployed("results", "download what a run kept (every job's, or one's)")
    p.add_argument("execution", metavar="EXECUTION")
    p.add_argument("-o", "--output", type=Path, default=Path("."), help="into this folder (FOLDER/JOB/...)")
    p.add_argument("--job", default=None)
    p.set_defaults(func=cmd_results)
    p = deployed("logs", "a job's stdout (or stderr) as the run kept it")
    p.add_argument("execution", metavar="EXECUTION")
    p.add_argument("job", metavar="JOB")
    p.add_argument("--stderr", action="store_true")
    p.add_argument("--task", default=None, help="an array job's task index")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("cleanup", help="after an interrupted or aborted run: cancel its jobs, keep "
                                       "their results, remove its folder (what the abort rule does)")
    p.add_argument("execution", metavar="EXECUTION",
                   help="a run-local execution's name (local-YYYYmmdd-HHMMSS-xxxxxx) or ARN; with "
                        "--stack, the deployed execution's ARN")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--local", action="store_true",
                       help="the local cluster's execution (the default without --stack)")
    where.add_argument("--stack", default=None,
                       help="a deployed stack: invoke its cluster function with the rule's event")
    p.add_argument("--region", default=None, help="with --stack: its region (default: the ARN's)")
    p.add_argument("--scheduler", choices=["slurm", "sge"], default=None,
                   help="local: the scheduler run-local used (default slurm)")
    p.add_argument("--artifacts-dir", type=Path, default=None,
                   help="local: write what the cleanup kept here (same keys as run-local's)")
    p.add_argument("--parameter-overrides", nargs="+", metavar="KEY=VALUE",
                   help="local: the template parameters run-local was given (RemoteWorkRoot=...)")
    p.set_defaults(func=cmd_cleanup)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except StepclusterError as exc:
        print(f"stepcluster: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        # run-local already said what it did or, on a second Ctrl-C, what may be left
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
