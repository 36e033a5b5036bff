#!/usr/bin/env bash
# Shoal's scaling figures for docs/benchmarks.md (issue 10): throughput,
# latency and server CPU per operation as the shard count and the node
# count grow, on this machine.
#
#   bench/scaling.sh            (or: make scaling)
#
# Runs bench/compare.sh (SYSTEMS=shoal SHOAL_TARGETS=resp: 1 master + N
# `shoal node` processes on loopback, driven by `shoal bench` through the
# nodes' Redis ports) once per cluster shape:
#   (a) SHOAL_SHARDS 64, 256, 1024 with 3 nodes, 3 replicas
#   (b) SHOAL_NODES 1, 3, 5 with 64 shards, 1 replica on 1 node, 3 otherwise
# ((a)'s first and (b)'s second shape are the same cluster, run twice: the
# two rows show how much a figure moves between identical runs.) Each run
# starts from empty data directories, runs the workloads in $WORKLOADS and
# records ops/s, p50/p99 and the servers' CPU seconds per 1000 operations
# (master and nodes, utime+stime from /proc/PID/stat), the load generator's
# CPU seconds and the CPU seconds the rest of the machine used meanwhile
# (other_cpu_s: noise, near 0 for numbers worth keeping); see compare.sh.
# Prints one table of every run and writes it to $RESULTS_DIR/scaling.tsv
# and, as markdown, $RESULTS_DIR/scaling.md; each run's results.tsv, JSON
# and server logs are in $RESULTS_DIR/<shape>/.
#
# Idle CPU of a cluster with many shards is bench/idle-cpu.sh.
#
# Settings (environment):
#   WORKLOADS="w c"       workloads per shape (w: updates only, c: reads only,
#                         both over RECORDS keys; see compare.sh)
#   PHASE_SECONDS=10      duration of each workload
#   RECORDS=50000         keys
#   SHARD_COUNTS="64 256 1024"  shard counts of (a)
#   NODE_COUNTS="1 3 5"   node counts of (b)
#   RESULTS_DIR=...       default ${TMPDIR:-/tmp}/shoal-scaling-DATE
#   CONCURRENCY, VALUE_SIZE, PORT_BASE, KEEP are passed to compare.sh.
#
# Needs what compare.sh needs for Shoal: Go, jq, redis-cli (redis-tools).
set -euo pipefail
cd "$(dirname "$0")/.."

WORKLOADS=${WORKLOADS:-w c}
PHASE_SECONDS=${PHASE_SECONDS:-10}
RECORDS=${RECORDS:-50000}
SHARD_COUNTS=${SHARD_COUNTS:-64 256 1024}
NODE_COUNTS=${NODE_COUNTS:-1 3 5}
RESULTS_DIR=${RESULTS_DIR:-${TMPDIR:-/tmp}/shoal-scaling-$(date +%Y%m%d-%H%M%S)}
CONCURRENCY=${CONCURRENCY:-64}
VALUE_SIZE=${VALUE_SIZE:-100}
export WORKLOADS PHASE_SECONDS RECORDS CONCURRENCY VALUE_SIZE
mkdir -p "$RESULTS_DIR"

tsv=$RESULTS_DIR/scaling.tsv
md=$RESULTS_DIR/scaling.md
printf 'shards\tnodes\treplicas\tworkload\tops_per_sec\tp50_ms\tp99_ms\tcpu_s_per_1000_ops\tclient_cpu_s\tother_cpu_s\n' >"$tsv"

# run NAME SHARDS NODES REPLICAS: one compare.sh run, its rows added to $tsv.
run() {
  local name=$1 shards=$2 nodes=$3 replicas=$4
  local dir=$RESULTS_DIR/$name
  echo "== $name: $shards shards, $nodes nodes, $replicas replicas (log: $dir/compare.log)"
  mkdir -p "$dir"
  if ! SYSTEMS=shoal SHOAL_TARGETS=resp MEMDISK=0 SHOAL_SHARDS=$shards SHOAL_NODES=$nodes SHOAL_REPLICAS=$replicas \
    RESULTS_DIR=$dir bench/compare.sh >"$dir/compare.log" 2>&1; then
    tail -n 20 "$dir/compare.log" >&2
    echo "FAIL: $name (see $dir)" >&2
    exit 1
  fi
  # Columns by name, so that a column added to results.tsv moves nothing.
  awk -F '\t' -v OFS='\t' -v s="$shards" -v n="$nodes" -v r="$replicas" '
    NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
    {
      if ($col["errors"] > 0) printf "warning: %s shards, %s nodes, workload %s: %s errors\n", s, n, $col["workload"], $col["errors"] > "/dev/stderr"
      print s, n, r, $col["workload"], $col["ops_per_sec"], $col["p50_ms"], $col["p99_ms"],
        $col["cpu_s_per_1000_ops"], $col["client_cpu_s"], $col["other_cpu_s"]
    }' "$dir/results.tsv" | tee -a "$tsv"
}

echo "== results in $RESULTS_DIR"
for s in $SHARD_COUNTS; do run "a-shards$s-nodes3" "$s" 3 3; done
for n in $NODE_COUNTS; do run "b-nodes$n-shards64" 64 "$n" $((n < 3 ? n : 3)); done

{
  echo "$(nproc) CPUs ($(grep -m1 '^model name' /proc/cpuinfo | sed 's/^[^:]*: *//')), $CONCURRENCY clients" \
    "through the Redis port, $VALUE_SIZE-byte values, $RECORDS keys, ${PHASE_SECONDS}s per workload."
  echo
  echo '| shards | nodes | replicas | workload | ops/s | p50 ms | p99 ms | server CPU s / 1000 ops | client CPU s | other CPU s |'
  echo '|---:|---:|---:|:---|---:|---:|---:|---:|---:|---:|'
  tail -n +2 "$tsv" | awk -F '\t' '{
    line = "|"
    for (i = 1; i <= NF; i++) line = line " " $i " |"
    print line
  }'
} >"$md"

echo
cat "$md"
echo
echo "results: $tsv, $md"
