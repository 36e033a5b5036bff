#!/usr/bin/env bash
# Idle CPU of a Shoal cluster with many shards (issue 10): starts
# `shoal playground` (1 master + NODES nodes in one process, SHARDS shards
# x 3 replicas), waits until every shard is led, lets it settle, then
# samples the process's CPU time (utime+stime from /proc/PID/stat) over
# SECONDS_IDLE seconds with no client traffic, and prints CPU % of one core.
#
#   SHARDS=1024 NODES=3 SECONDS_IDLE=30 bench/idle-cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SHARDS=${SHARDS:-1024}
NODES=${NODES:-3}
SECS=${SECONDS_IDLE:-30}
SETTLE=${SETTLE:-15}
dir=$(mktemp -d)
trap 'kill -INT $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
CGO_ENABLED=0 go build -o "$dir/shoal" ./cmd/shoal
"$dir/shoal" playground --shards "$SHARDS" --nodes "$NODES" --data-dir "$dir/data" \
  --master-port 27000 --http-port 27080 --node-base-port 27100 --node-http-base-port 27180 --resp-base-port 27379 \
  --ready-timeout 5m --log-level warn >"$dir/out" 2>&1 &
pid=$!
for _ in $(seq 600); do
  grep -q "^NODE" "$dir/out" 2>/dev/null && break
  kill -0 $pid 2>/dev/null || { cat "$dir/out"; exit 1; }
  sleep 0.5
done
grep -q "^NODE" "$dir/out" || { echo "playground not ready"; cat "$dir/out"; exit 1; }
sleep "$SETTLE"
tck=$(getconf CLK_TCK)
cpu() { awk '{print $14+$15}' "/proc/$pid/stat"; }
a=$(cpu); sleep "$SECS"; b=$(cpu)
echo "shards=$SHARDS nodes=$NODES idle for ${SECS}s: $(awk -v a="$a" -v b="$b" -v t="$tck" -v s="$SECS" 'BEGIN{printf "%.1f%% of one core (%.2f CPU s)", 100*(b-a)/t/s, (b-a)/t}')"
