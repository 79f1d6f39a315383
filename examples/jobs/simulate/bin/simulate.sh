#!/bin/bash
# A stand-in for real work: squares numbers, slowly.
set -eu
for i in 1 2 3 4 5; do
    echo "step $i: $((i * i))"
    sleep 1
done > "$STEPCLUSTER_OUTPUT/squares.txt"
echo "simulation done: $(wc -l < "$STEPCLUSTER_OUTPUT/squares.txt") steps"
