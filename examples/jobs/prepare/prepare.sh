#!/bin/bash
# Writes the simulation's input into the job's output folder.
set -eu
echo "preparing inputs for $STEPCLUSTER_EXECUTION on $(hostname)"
seq 1 5 > "$STEPCLUSTER_OUTPUT/inputs.txt"
echo "wrote $(wc -l < "$STEPCLUSTER_OUTPUT/inputs.txt") inputs"
