#!/bin/bash
# One task of the convergence sweep: the midpoint rule with 10^TASK points (task 1..4).
set -eu
n=$(( 10 ** STEPCLUSTER_TASK_ID ))
awk -v n="$n" 'BEGIN { h = 1 / n; s = 0; for (i = 0; i < n; i++) { x = (i + 0.5) * h; s += 4 / (1 + x * x) }
    printf "%d %.15f %.3e\n", n, s * h, s * h - 3.14159265358979 }' | tee "$STEPCLUSTER_OUTPUT/estimate.txt"
