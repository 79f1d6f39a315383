#!/bin/bash
# Reads the solve's result from its job folder on the head node and reports it.
set -eu
solve="$STEPCLUSTER_JOB_DIR/../solve/output"
echo "ranks: $(wc -l < "$solve/parts.txt")"
cat "$solve/pi.txt" | tee "$STEPCLUSTER_OUTPUT/summary.txt"
