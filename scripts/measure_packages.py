#!/usr/bin/env python3
"""What `sam build` ships each python3.11 function, and how long its cold start imports take
from that alone.

Usage: .venv/bin/python scripts/measure_packages.py [BUILD_DIR] [--repeat N] [--json]
(BUILD_DIR: .aws-sam/build, written by `make build`; `make benchmark` prints this table too.)

For each function: the bytes of its code package and of the layers it has with the default
parameters (Lambda's 250 MB limit counts both, unzipped), and the first call's imports (the
handler, the run service, the SSH client where the function logs in, and boto3) timed in a fresh
interpreter that sees nothing but the package, its layers, the standard library and boto3 (the
Lambda runtime's own), median and worst of N runs. Beside it, the same files with their
bytecode removed (what a cold start costs when the build ships none: Lambda's file system is
read-only, so Python compiles every module in memory) and the floor: the interpreter starting
and importing boto3 alone, which no package can make faster. Creating the boto3 clients is
timed apart (botocore reading its service models: the runtime's work, not the package's).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure_functions import FIRST_CALL, _dummy_aws_env  # noqa: E402

#: What the python3.11 Lambda runtime provides beside the standard library: boto3 and its
#: dependencies (the probe fails if the first call loads anything from elsewhere).
RUNTIME_MODULES = ["boto3", "botocore", "s3transfer", "jmespath", "dateutil", "six", "urllib3"]

PROBE = r"""
import importlib, json, sys, time
allowed, module, extra, clients = json.loads(sys.argv[1])
sys.path[:0] = allowed
started = time.perf_counter()
if module:
    importlib.import_module("handlers." + module)
    from stepcluster.runtime import service
    service()
    for name in extra:
        importlib.import_module(name)
import boto3  # every function makes clients; alone, the floor
imported = time.perf_counter()
for name in clients:
    boto3.client(name, region_name="us-east-1")
done = time.perf_counter()
outside = sorted({name.split(".")[0] for name, m in list(sys.modules.items())
                  if getattr(m, "__file__", None) and not m.__file__.startswith(sys.base_prefix)
                  and not any(m.__file__.startswith(p) for p in allowed)})
print(json.dumps({"import_ms": 1000 * (imported - started), "clients_ms": 1000 * (done - imported),
                  "outside": outside}))
"""


def tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def runtime_folder(into: Path) -> Path:
    """A folder holding only what the Lambda runtime adds to the standard library (links into
    this virtualenv)."""
    import importlib.util

    into.mkdir(parents=True, exist_ok=True)
    for name in RUNTIME_MODULES:
        spec = importlib.util.find_spec(name)
        origin = Path(spec.origin)
        source = origin.parent if origin.name == "__init__.py" else origin
        (into / source.name).symlink_to(source)
    return into


def built_functions(build_dir: Path) -> dict[str, dict]:
    """python3.11 function -> {"code": folder, "layers": {name: folder}} in a `sam build`
    output, with the default parameters' layers (an `!If` counts its branch for the defaults:
    ClusterBackend existing, so no cfncluster layer)."""
    from cfnlint.decode import cfn_yaml

    template = cfn_yaml.load(str(build_dir / "template.yaml"))
    resources = template["Resources"]
    default_false = {"UseCfncluster", "UseParallelCluster"}

    def refs(entry) -> list[str]:
        if isinstance(entry, dict) and "Ref" in entry:
            return [entry["Ref"]]
        if isinstance(entry, dict) and "Fn::If" in entry:
            condition, then, other = entry["Fn::If"]
            return refs(other if condition in default_false else then)
        return []

    functions = {}
    for name in FIRST_CALL:
        props = resources[name]["Properties"]
        layers = [ref for entry in props.get("Layers") or [] for ref in refs(entry)
                  if ref in resources and resources[ref]["Type"] == "AWS::Serverless::LayerVersion"]
        functions[name] = {"code": build_dir / props["CodeUri"],
                           "layers": {layer: build_dir / resources[layer]["Properties"]["ContentUri"]
                                      for layer in layers}}
    return functions


def probe(allowed: list[Path], module: str | None, extra: list[str], clients: list[str],
          no_bytecode: bool = False) -> dict:
    flags = ["-I", "-S"] + (["-B"] if no_bytecode else [])
    argument = json.dumps([[str(p) for p in allowed], module, extra, clients])
    result = subprocess.run([sys.executable, *flags, "-c", PROBE, argument], capture_output=True,
                            text=True, timeout=120, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    if result.returncode != 0:
        raise RuntimeError(f"the first call of {module or 'boto3'} failed from the build alone:\n"
                           f"{result.stderr[-3000:]}")
    return json.loads(result.stdout)


def without_bytecode(folder: Path, into: Path) -> Path:
    shutil.copytree(folder, into, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return into


def summary(runs: list[dict], key: str) -> dict:
    values = [r[key] for r in runs]
    return {"median": round(statistics.median(values)), "worst": round(max(values))}


def measure(build_dir: Path, repeat: int = 5) -> dict:
    _dummy_aws_env()
    functions = built_functions(build_dir)
    rows = {}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        runtime = runtime_folder(scratch / "runtime")
        floor = [probe([runtime], None, [], []) for _ in range(repeat)]
        stripped: dict[Path, Path] = {}
        for name, built in functions.items():
            module, extra, clients = FIRST_CALL[name]
            extra = [m for m in extra if not m.startswith("cfncluster")]  # its layer: not by default
            folders = [built["code"], *(f / "python" for f in built["layers"].values())]
            for folder in folders:
                if folder not in stripped:
                    stripped[folder] = without_bytecode(folder, scratch / f"nopyc-{len(stripped)}")
            with_pycs = [probe([*folders, runtime], module, extra, clients) for _ in range(repeat)]
            no_pycs = [probe([*(stripped[f] for f in folders), runtime], module, extra, clients, True)
                       for _ in range(repeat)]
            outside = sorted({m for r in with_pycs + no_pycs for m in r["outside"]})
            if outside:
                raise RuntimeError(f"{name}'s first call loads {outside} from outside its package and layers")
            rows[name] = {
                "package_bytes": tree_bytes(built["code"]),
                "layers": {layer: tree_bytes(folder) for layer, folder in built["layers"].items()},
                "import_ms": summary(with_pycs, "import_ms"),
                "import_ms_without_bytecode": summary(no_pycs, "import_ms"),
                "clients_ms": summary(with_pycs, "clients_ms"),
            }
            rows[name]["total_bytes"] = rows[name]["package_bytes"] + sum(rows[name]["layers"].values())
    return {"repeat": repeat, "floor_import_boto3_ms": summary(floor, "import_ms"), "functions": rows}


def table(report: dict) -> str:
    floor = report["floor_import_boto3_ms"]
    lines = [f"{'function':<24} {'package MB':>10} {'+ layers MB':>11}  {'first-call imports ms':>21}"
             f"  {'no bytecode ms':>14}  {'clients ms':>10}  layers",
             f"{'':<24} {'':>10} {'':>11}  {'median / worst':>21}  {'median':>14}  {'median':>10}"]
    for name, row in report["functions"].items():
        lines.append(f"{name:<24} {row['package_bytes'] / 1e6:>10.2f} {row['total_bytes'] / 1e6:>11.2f}  "
                     f"{row['import_ms']['median']:>12} / {row['import_ms']['worst']:<6}  "
                     f"{row['import_ms_without_bytecode']['median']:>14}  {row['clients_ms']['median']:>10}  "
                     f"{', '.join(row['layers']) or '-'}")
    lines.append(f"{'floor: import boto3':<24} {'':>10} {'':>11}  {floor['median']:>12} / {floor['worst']:<6}"
                 f"  (python -I -S importing the runtime's boto3 alone; {report['repeat']} runs each)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("build_dir", nargs="?", default=str(ROOT / ".aws-sam" / "build"))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    build_dir = Path(args.build_dir)
    if not (build_dir / "template.yaml").is_file():
        print(f"no `sam build` output in {build_dir}: run `make build` first", file=sys.stderr)
        return 2
    report = measure(build_dir, args.repeat)
    print(json.dumps(report, indent=1) if args.json else table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
