#!/bin/bash
# Reports where it ran; a real workflow would summarise the simulation here.
set -eu
echo "job $STEPCLUSTER_JOB_NAME of execution $STEPCLUSTER_EXECUTION on cluster $STEPCLUSTER_CLUSTER_NAME"
echo "report written" | tee "$STEPCLUSTER_OUTPUT/report.txt"
