#!/usr/bin/env bash
# `make test`: every test, in two phases of two pytest processes each.
#
# The end-to-end runs (-m e2e) mostly wait on the local cluster, the others mostly use the CPU,
# so they run side by side. The fault tests stop the rig's daemons by their pid files (a
# minute without slurmctld, 30 s without sge_qmaster, sshd gone): nothing else may use the rig
# meanwhile, so they run beside the CPU-bound tests; the other end-to-end runs come after them,
# in two processes (they share the rig, not their executions, jobs or folders).
# Each process's report is printed when its phase ends; the status is 0 only if all passed.
set -u
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
failed=0 pids=() names=()

start() {  # NAME PYTEST-ARGS...: in the background, its report to a file
  local name=$1; shift
  pytest -ra -p no:cacheprovider --basetemp="$out/$name.tmp" "$@" > "$out/$name.log" 2>&1 &
  pids+=($!) names+=("$name")
}

report() {  # wait for the phase's processes, print their reports in order
  local i
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || failed=1
    echo "== ${names[$i]}"
    cat "$out/${names[$i]}.log"
    echo
  done
  pids=() names=()
}

start unit-functional-deployment -m "not e2e"
start e2e-faults -m e2e tests/e2e/test_faults.py
report
# (split by measured time: about three and a half minutes each here)
start e2e-workflows -m e2e tests/e2e/test_workflows.py tests/e2e/test_graphs.py tests/e2e/test_user_side.py
start e2e-rest -m e2e tests/e2e --ignore=tests/e2e/test_faults.py --ignore=tests/e2e/test_workflows.py \
    --ignore=tests/e2e/test_graphs.py --ignore=tests/e2e/test_user_side.py
report
exit $failed
