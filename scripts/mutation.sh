#!/usr/bin/env bash
# `make mutation`: plant each small bug mutmut can make in the modules below, one at a time,
# and count how many the unit and functional tests notice (killed) or miss (survived).
# Not in CI: it runs the selected tests once per mutant (minutes per module).
#
# mutmut names a mutant after its module path from the working directory and puts the mutated
# copy of `src/` first on sys.path, so it runs in a scratch tree where functions/ is `src/`.
# It has its own venv: its click requirement conflicts with aws-sam-cli's pin.
#
#   scripts/mutation.sh                       every module listed in MODULES
#   scripts/mutation.sh stepcluster/staging.py   one module (path below functions/)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/.venv-mutation
# module (below functions/) -> the tests that guard it
declare -A TESTS=(
  [stepcluster/schedulers/]="tests/unit/test_schedulers.py"
  [stepcluster/remote/]="tests/unit/test_ssh.py"
  [stepcluster/staging.py]="tests/unit/test_staging.py"
  [stepcluster/results.py]="tests/functional/test_results.py"
  [stepcluster/config.py]="tests/unit/test_config.py"
  [stepcluster/inifile.py]="tests/unit/test_config.py tests/unit/test_inifile.py"
  [stepcluster/jobscripts.py]="tests/unit/test_jobscripts.py"
  [stepcluster/decisions.py]="tests/unit/test_decisions.py"
  [stepcluster/record.py]="tests/unit/test_record.py tests/unit/test_decisions.py"
)
MODULES=("$@")
[ ${#MODULES[@]} -gt 0 ] || MODULES=("${!TESTS[@]}")

if [ ! -x "$VENV/bin/mutmut" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q 'mutmut==3.8.1' pytest pytest-timeout hypothesis boto3 paramiko \
    'moto[s3,secretsmanager,ec2,cloudformation,stepfunctions]>=5.2.5'
fi

for module in "${MODULES[@]}"; do
  tests=${TESTS[$module]:?"no tests listed for $module"}
  # one scratch tree per module, so two modules can be measured at once
  WORK=$ROOT/.mutation/$(echo "$module" | tr '/.' '__')
  rm -rf "$WORK" && mkdir -p "$WORK"
  cp -R functions "$WORK/src"
  cp -R tests events examples statemachine "$WORK/"
  cat > "$WORK/pyproject.toml" <<EOF
[tool.pytest.ini_options]
timeout = 120
[tool.mutmut]
source_paths = ["src/$module"]
also_copy = ["src/", "statemachine/", "events/", "examples/"]
pytest_add_cli_args_test_selection = [$(printf '"%s",' $tests)]
pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x"]
EOF
  (cd "$WORK" && "$VENV/bin/mutmut" run --max-children "${MUTATION_CHILDREN:-2}" > mutmut.log 2>&1 || true)
  (cd "$WORK" && "$VENV/bin/mutmut" results --all true > results.txt 2>&1 || true)
  killed=$(grep -c ': killed' "$WORK/results.txt" || true)
  survived=$(grep -c ': survived' "$WORK/results.txt" || true)
  other=$(grep -vc -e ': killed' -e ': survived' "$WORK/results.txt" || true)
  total=$((killed + survived))
  rate=$([ $total -gt 0 ] && echo "$((100 * killed / total))%" || echo "-")
  printf '%-32s killed %4d  survived %4d  other %3d  kill rate %s\n' "$module" "$killed" "$survived" "$other" "$rate"
  mkdir -p "$ROOT/.mutation-results"
  cp "$WORK/results.txt" "$ROOT/.mutation-results/$(echo "$module" | tr '/' '_').txt"
done
