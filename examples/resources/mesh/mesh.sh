#!/bin/bash
# Splits the domain [0, 1) into cells, one line each: "index lower upper".
set -eu
cells=4000
awk -v n="$cells" 'BEGIN { for (i = 0; i < n; i++) printf "%d %.6f %.6f\n", i, i / n, (i + 1) / n }' \
    > "$STEPCLUSTER_OUTPUT/mesh.txt"
echo "mesh: $cells cells"
