#!/usr/bin/env bash
# Set up the environment and run the whole test suite. pytest's exit code 5 (no tests collected)
# is a failure here: a suite that runs nothing must not pass.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
.venv/bin/ruff check . || exit 1
.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
