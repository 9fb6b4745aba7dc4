#!/usr/bin/env bash
# The whole test suite, then one closing line with the totals of every test binary
# (cargo's own last line belongs to the doc-tests, which are few).
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test || exit 1
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --release 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
awk '
  /^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed;/) p += $i; if ($(i+1) ~ /^failed;/) f += $i } }
  /^crash: [0-9]+ passed, [0-9]+ failed$/ { p += $2; f += $4 }
  END { printf "tests: %d passed, %d failed\n", p, f }
' "$log"
exit "$status"
