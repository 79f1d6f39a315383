#!/bin/bash
# Reads the solve's and the sweep's results from their job folders on the head node.
set -eu
jobs="$STEPCLUSTER_JOB_DIR/.."
echo "solve with $(wc -l < "$jobs/solve/output/parts.txt") ranks: $(cat "$jobs/solve/output/pi.txt")"
echo "convergence (points, estimate, error):"
for task in "$jobs"/sweep/[0-9]*/; do cat "$task/output/estimate.txt"; done | sort -n | tee "$STEPCLUSTER_OUTPUT/summary.txt"
