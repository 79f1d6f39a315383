"""Time results.collect for one job with many small output files, against moto's in-process S3.

    .venv/bin/python scripts/results_benchmark.py [FILES] [BYTES] [--plain]   (default 20000 100)

--plain keeps every file as its own object (no archive, whatever the count): the concurrent
uploads alone, for comparison.

The head node is a local bash running the real collection script (as tests/functional/
test_results.py does); the S3 is moto's, in this process. Prints the wall time of collect, the
objects kept and the summary. A figure, not a test: nothing here asserts a time.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "functions"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import boto3  # noqa: E402
from moto import mock_aws  # noqa: E402

from stepcluster import results  # noqa: E402
from stepcluster.record import Run  # noqa: E402

from functional.test_results import LocalStream  # noqa: E402  the head node as a local bash


def main(files: int, size: int) -> None:
    with tempfile.TemporaryDirectory() as root, mock_aws():
        job = Path(root, "jobs", "a")
        (job / "output").mkdir(parents=True)
        (job / "stdout").write_text("out\n")
        (job / "result").write_text("0 0 1764460000\n")
        for i in range(files):
            (job / "output" / f"f{i:05d}.dat").write_bytes(b"x" * size)
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="artifacts")
        run = Run.from_dict({"execution": "exec-1", "cluster_name": "c1", "order": "parallel",
                             "cluster": {"status": "READY", "run_dir": root},
                             "jobs": {"a": {"job_id": "1", "state": "SUCCEEDED"}}})
        started, cpu = time.perf_counter(), time.process_time()
        summary = results.collect(LocalStream(), run, "artifacts", s3_client=s3)
        took, cpu = time.perf_counter() - started, time.process_time() - cpu
        keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="artifacts")
                for o in page.get("Contents", [])]
        print(f"{files} files of {size} bytes: collect took {took:.1f} s ({cpu:.1f} CPU-s in this "
              f"process, moto's S3 included); {len(keys)} objects kept")
        print(json.dumps(summary))


if __name__ == "__main__":
    if "--plain" in sys.argv:
        sys.argv.remove("--plain")
        results.ARCHIVE_ABOVE_FILES = results.PLAIN_OUTPUT_FILES_PER_RUN = 10**9
    main(*(int(a) for a in sys.argv[1:3]))
