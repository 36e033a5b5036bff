#!/usr/bin/env bash
# Shoal at two revisions under the same workload, in alternating runs, to
# tell a change from the noise of a shared machine (issue 10).
#
#   bench/ab.sh REV_A REV_B       e.g. bench/ab.sh HEAD~1 HEAD
#
# Builds `shoal` (CGO_ENABLED=0) at each revision in a temporary git
# worktree, then runs bench/compare.sh with SYSTEMS=shoal and SHOAL_BIN set,
# $ROUNDS times, A then B in odd rounds and B then A in even ones: on the
# test machine the first run of a pair was faster by about 7% whichever
# revision it was (docs/benchmarks.md), so a fixed order favours A. Use
# an even ROUNDS; slow drifts of the machine fall on both.
# Each run starts a fresh cluster. Prints one line per run and workload
# (ops/s, p99, server CPU seconds per 1000 operations) and the means per
# revision; every run's results stay under $RESULTS_DIR.
#
# Settings (environment): ROUNDS=4, and those of bench/compare.sh; here
# SHOAL_TARGETS defaults to resp, WORKLOADS to "load w", PHASE_SECONDS to 12.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -ne 2 ]; then
  echo "usage: bench/ab.sh REV_A REV_B" >&2
  exit 2
fi
ROUNDS=${ROUNDS:-4}
export SYSTEMS=shoal SHOAL_TARGETS=${SHOAL_TARGETS:-resp} WORKLOADS=${WORKLOADS:-load w} PHASE_SECONDS=${PHASE_SECONDS:-12}
RESULTS_DIR=${RESULTS_DIR:-${TMPDIR:-/tmp}/shoal-ab-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$RESULTS_DIR"
work=$(mktemp -d)
trap 'git worktree remove --force "$work/wt" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

declare -A bin
for side in A B; do
  rev=$1
  shift
  commit=$(git rev-parse --short "$rev^{commit}")
  echo "== build $side: $rev ($commit)"
  git worktree add -q --detach "$work/wt" "$commit"
  (cd "$work/wt" && CGO_ENABLED=0 go build -o "$work/shoal-$side" ./cmd/shoal)
  git worktree remove --force "$work/wt"
  bin[$side]=$work/shoal-$side
  echo "$side $rev $commit" >>"$RESULTS_DIR/revisions"
done

all=$RESULTS_DIR/runs.tsv
printf 'side\tround\ttarget\tworkload\tops_per_sec\tp99_ms\tcpu_s_per_1000_ops\n' >"$all"
for round in $(seq "$ROUNDS"); do
  order="A B"
  if [ $((round % 2)) -eq 0 ]; then order="B A"; fi
  for side in $order; do
    dir=$RESULTS_DIR/$side-$round
    echo "== round $round, $side"
    SHOAL_BIN=${bin[$side]} RESULTS_DIR=$dir bench/compare.sh >"$dir.log" 2>&1 || {
      echo "compare.sh failed; see $dir.log" >&2
      exit 1
    }
    awk -F'\t' -v side="$side" -v round="$round" 'NR > 1 {print side "\t" round "\t" $2 "\t" $3 "\t" $7 "\t" $9 "\t" $12}' \
      "$dir/results.tsv" | tee -a "$all"
  done
done

echo
echo "== means over $ROUNDS rounds ($(cat "$RESULTS_DIR/revisions" | awk '{printf "%s=%s ", $1, $2}'))"
awk -F'\t' 'NR > 1 {k = $1 "\t" $3 "\t" $4; n[k]++; ops[k] += $5; p99[k] += $6; cpu[k] += $7}
  END {for (k in n) printf "%s\t%.0f\t%.2f\t%.3f\n", k, ops[k] / n[k], p99[k] / n[k], cpu[k] / n[k]}' "$all" |
  sort -k2,2 -k3,3 -k1,1 | (printf 'side\ttarget\tworkload\tops_per_sec\tp99_ms\tcpu_s_per_1000_ops\n'; cat) | column -t -s $'\t'
echo "runs: $all"
