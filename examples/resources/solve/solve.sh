#!/bin/bash
# Integrates 4/(1+x^2) over the mesh (= pi), one rank per task. The directives below are what
# this script asks for when submitted by hand (sbatch solve.sh); the jobs config's tasks and
# time_limit replace them when stepcluster submits it.
#SBATCH --ntasks=2
#SBATCH --time=00:30:00
set -eu
tasks=${SLURM_NTASKS:-${NSLOTS:-1}}
# 1,000 midpoints per cell of the mesh job's output (sequential jobs of a run share its folder)
points=$(( $(wc -l < "$STEPCLUSTER_JOB_DIR/../mesh/output/mesh.txt") * 1000 ))
part() {   # part RANK: the sum over this rank's share of the midpoints
    awk -v r="$1" -v t="$tasks" -v n="$points" 'BEGIN { h = 1 / n; s = 0
        for (i = r; i < n; i += t) { x = (i + 0.5) * h; s += 4 / (1 + x * x) }
        printf "%d %.15f\n", r, s * h }'
}
export -f part; export tasks points
if [ -n "${SLURM_JOB_ID:-}" ]; then
    # one task per rank, launched by Slurm
    srun --ntasks="$tasks" bash -c 'part "$SLURM_PROCID"' > "$STEPCLUSTER_OUTPUT/parts.txt"
else
    # Grid Engine's smp slots on one host: one process per slot
    for r in $(seq 0 $((tasks - 1))); do part "$r" & done > "$STEPCLUSTER_OUTPUT/parts.txt"; wait
fi
echo "solve: $tasks ranks, $points points"
awk '{ s += $2 } END { printf "pi ~ %.12f\n", s }' "$STEPCLUSTER_OUTPUT/parts.txt" | tee "$STEPCLUSTER_OUTPUT/pi.txt"
