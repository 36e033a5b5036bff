#!/usr/bin/env bash
# Redis Cluster compatibility check against a real playground, with the
# stock Redis tools (Debian's redis-tools): redis-cli -c follows MOVED,
# redis-benchmark --cluster runs SET, GET, INCR and MSET with no errors, and
# what the benchmark wrote reads back through redis-cli.
#
#   scripts/redis-compat.sh [requests]      (default 100000)
#
# Needs redis-cli and redis-benchmark on PATH; `make redis-compat` runs it.
# Ports: RESP 16380.., gRPC 17100.., HTTP 17180.., master 17000/17080, so it
# does not collide with a playground on the default ports.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${1:-100000}
RESP_BASE=16379
PORT1=$((RESP_BASE + 1))

for t in redis-cli redis-benchmark; do
  command -v "$t" >/dev/null || { echo "$t not found: apt-get install redis-tools" >&2; exit 2; }
done

work=$(mktemp -d)
pg_pid=
cleanup() {
  if [ -n "$pg_pid" ]; then
    kill -INT "$pg_pid" 2>/dev/null || true
    wait "$pg_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*" >&2
  echo "--- playground log (tail)" >&2
  tail -n 40 "$work/playground.log" >&2 || true
  exit 1
}

echo "== build"
CGO_ENABLED=0 go build -o "$work/shoal" ./cmd/shoal

echo "== start playground (3 nodes, 64 shards, 3 replicas)"
"$work/shoal" playground --data-dir "$work/data" --log-level warn \
  --master-port 17000 --http-port 17080 --node-base-port 17100 \
  --node-http-base-port 17180 --resp-base-port "$RESP_BASE" \
  >"$work/playground.log" 2>&1 &
pg_pid=$!

# The playground prints its table once every shard has a leader.
deadline=$((SECONDS + 90))
until grep -q "Every shard has a leader" "$work/playground.log"; do
  kill -0 "$pg_pid" 2>/dev/null || fail "playground exited"
  [ $SECONDS -lt $deadline ] || fail "playground not ready in 90s"
  sleep 0.2
done
state=$(redis-cli -p "$PORT1" cluster info | tr -d '\r' | grep '^cluster_state:')
[ "$state" = "cluster_state:ok" ] || fail "CLUSTER INFO says $state"

echo "== redis-cli -c follows MOVED"
for i in $(seq 1 50); do
  out=$(redis-cli -c -p "$PORT1" set "compat:$i" "value-$i")
  [ "$out" = "OK" ] || fail "set compat:$i: $out"
done
for i in $(seq 1 50); do
  for p in $PORT1 $((PORT1 + 1)) $((PORT1 + 2)); do
    out=$(redis-cli -c -p "$p" get "compat:$i")
    [ "$out" = "value-$i" ] || fail "get compat:$i via $p: got '$out'"
  done
done
# Without -c, a key of another node answers MOVED with the right owner.
moved=0
for i in $(seq 1 50); do
  out=$(redis-cli -p "$PORT1" get "compat:$i")
  case "$out" in
    MOVED*) moved=$((moved + 1)) ;;
    "value-$i") ;;
    *) fail "plain get compat:$i: $out" ;;
  esac
done
[ "$moved" -gt 0 ] || fail "no key answered MOVED from node 1: routing is not spread"
echo "   50 keys written and read from every node; $moved/50 MOVED without -c"

echo "== redis-benchmark --cluster -t set,get,incr,mset -n $N -r 10000"
redis-benchmark --cluster -p "$PORT1" -t set,get,incr,mset -n "$N" -r 10000 -q \
  >"$work/bench.out" 2>&1 || { cat "$work/bench.out"; fail "redis-benchmark exited $?"; }
tr '\r' '\n' <"$work/bench.out" | grep -E 'requests per second' | grep -v 'rps=' | sed 's/^ *//' | tee "$work/bench.summary"
if grep -qiE 'error|MOVED|ASK|TRYAGAIN|CLUSTERDOWN' "$work/bench.out"; then
  grep -iE 'error|MOVED|ASK|TRYAGAIN|CLUSTERDOWN' "$work/bench.out" | head >&2
  fail "redis-benchmark saw errors"
fi
for t in SET GET INCR MSET; do
  grep -q "^$t" "$work/bench.summary" || fail "no result line for $t"
done

echo "== what the benchmark wrote reads back"
# redis-benchmark --cluster gives each node's clients a hash tag of a slot
# that node leads; with -r the keys are key:{tag}NNNNNNNNNNNN and the INCR
# counters counter:{tag}NNNNNNNNNNNN. Each node's SCAN covers the shards it
# leads, so scanning every node (and reading there) covers the keyspace once.
# The counters together must count every INCR: none lost, none doubled.
total=0 counters=0 values=0
for p in $PORT1 $((PORT1 + 1)) $((PORT1 + 2)); do
  redis-cli -p "$p" --scan --pattern 'counter:*' >"$work/counters.$p"
  redis-cli -p "$p" --scan --pattern 'key:*' >"$work/keys.$p"
  if [ -s "$work/counters.$p" ]; then
    sum=$(sed 's/^/GET /' "$work/counters.$p" | redis-cli -p "$p" | awk '{s += $1} END {print s + 0}')
    total=$((total + sum))
    counters=$((counters + $(wc -l <"$work/counters.$p")))
  fi
  if [ -s "$work/keys.$p" ]; then
    bad=$(sed 's/^/STRLEN /' "$work/keys.$p" | redis-cli -p "$p" | grep -cvx 3 || true)
    [ "$bad" -eq 0 ] || fail "$bad key:* values on node port $p are not the 3 bytes redis-benchmark writes"
    values=$((values + $(wc -l <"$work/keys.$p")))
  fi
done
[ "$counters" -gt 0 ] || fail "no counter keys found"
[ "$total" -eq "$N" ] || fail "counters sum to $total, want $N (lost or doubled INCRs)"
[ "$values" -gt 0 ] || fail "no key:* keys found"
echo "   $counters counters sum to $total = INCRs issued; $values key:* values read back, each 3 bytes"

echo "redis compatibility: OK"
