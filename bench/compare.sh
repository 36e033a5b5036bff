#!/usr/bin/env bash
# Shoal against etcd and Redis Cluster on this machine, with one load
# generator (`shoal bench`) and one workload for all three (issue 10).
#
#   bench/compare.sh            (or: make compare)
#
# Starts, one system at a time, each on loopback ports only:
#   shoal  1 master + 3 `shoal node` processes, 64 shards x 3 replicas (see
#          SHOAL_SHARDS, SHOAL_NODES, SHOAL_REPLICAS), driven
#          through the Go client (target shoal) and through its Redis port
#          (target resp); every write is synced by a majority before it is
#          acknowledged, reads are linearizable (at the leader, under its
#          lease when it holds one, else by a ReadIndex round; set
#          SHOAL_READ_LEASE=-1s for a round per read batch, as etcd does).
#   etcd   3 members of Debian's etcd-server, default settings (fsync on),
#          driven over its v3 gRPC KV API (target etcd, linearizable Range).
#   redis  Redis Cluster of 3 masters + 3 replicas from Debian's redis-server,
#          appendonly yes, appendfsync always (target resp); replication is
#          asynchronous, so an acknowledged write is on the master's disk only.
# and runs the workloads in $WORKLOADS against each, recording ops/s,
# p50/p99/p99.9 (shoal bench --json), and the CPU seconds per 1000 operations
# used by all of that system's server processes (utime+stime and their
# reaped children's, such as Redis's AOF rewrites, from /proc/PID/stat
# before and after the phase), the load generator's CPU
# seconds, and the CPU seconds the rest of the machine used meanwhile
# (other_cpu_s, from /proc/stat: noise from other work, which should be
# near 0 for numbers worth keeping). Prints a table and writes it,
# with every run's JSON and the servers' logs, to $RESULTS_DIR.
#
# Settings (environment):
#   PHASE_SECONDS=20      duration of each timed workload (not the load)
#   WORKLOADS="load w c a" workloads in order; load inserts $RECORDS keys
#   RECORDS=50000         keys (load inserts them, the others pick among them)
#   CONCURRENCY=64        clients
#   RATE=0                operations per second for the timed workloads
#                         (not load), sent open-loop on a fixed schedule with
#                         latency counted from each one's scheduled start
#                         (shoal bench --rate); 0: closed loop. Set it below
#                         the slowest system's capacity to compare latencies
#                         at one offered load.
#   PIPELINE=1            commands per round trip per client, for the RESP
#                         targets (Shoal's and Redis's) only: the Go client
#                         and etcd send one request per call
#   RESP_CLIENT=builtin   the client of the RESP targets: builtin (shoal
#                         bench's own, least CPU per operation) or go-redis
#                         (go-redis's ClusterClient); the load generator
#                         shares the machine with the servers. A binary
#                         without --resp-client uses go-redis: for
#                         bench/ab.sh with such a revision on one side,
#                         set RESP_CLIENT=go-redis so both sides match
#   VALUE_SIZE=100        bytes per value
#   DISTRIBUTION=uniform  which keys the timed workloads pick: uniform or
#                         zipfian (Go's math/rand Zipf, s=1.01, unscrambled:
#                         more skewed than YCSB's default scrambled zipfian;
#                         the hottest of 50000 keys gets about 9% of the
#                         operations)
#   SYSTEMS="shoal etcd redis"
#   SHOAL_TARGETS="shoal resp"  how Shoal is driven (Go client, Redis port);
#                         also shoal-unary: the Go client with every request
#                         its own unary gRPC call (shoal bench --unary)
#   SHOAL_SHARDS=64       Shoal's shards (a power of two)
#   SHOAL_NODES=3         `shoal node` processes (1..79)
#   SHOAL_REPLICAS=3      replicas per shard; default min(3, SHOAL_NODES)
#   SHOAL_READY_SECONDS=120  how long the shards may take to all have a
#                         leader; default 120, scaled up above 1024 shards
#   MEMDISK=1             also load MEMDISK_KEYS keys into Shoal and etcd and
#   MEMDISK_KEYS=1000000  report their servers' summed RSS and data size
#   RESULTS_DIR=...       default ${TMPDIR:-/tmp}/shoal-compare-DATE
#   KEEP=1                keep the data directories
#   PROFILE=1             take CPU profiles during each timed workload: of
#                         every Shoal node (from /debug/pprof on its HTTP
#                         port), merged into $RESULTS_DIR/shoal-TARGET-WORKLOAD.pprof,
#                         and of the load generator for every system
#                         (shoal bench --cpu-profile), in
#                         $RESULTS_DIR/SYSTEM-TARGET-WORKLOAD.client.pprof;
#                         read with `go tool pprof -top FILE`. Profiling
#                         costs a few percent of CPU: compare numbers only
#                         between runs that both profile, or neither.
#   TRACE=1               take a Go execution trace of every Shoal node
#                         during each timed workload, to
#                         $RESULTS_DIR/shoal-TARGET-WORKLOAD.nodeN.trace;
#                         read with `go tool trace FILE`, or list the
#                         long waits with bench/tracewaits (`cd
#                         bench/tracewaits && go run . -min 25ms FILE`).
#                         Costs more than PROFILE.
#   (always, for Shoal)   each node's Raft counters (shoal_raft_*_total on
#                         /metrics) are read before and after each workload;
#                         their growth, summed over the nodes and per
#                         operation, goes to $RESULTS_DIR/shoal-TARGET-WORKLOAD.raft.tsv
#                         and the messages sent per operation are printed
#   SERVER_GOMAXPROCS=N   run the Go servers (Shoal's master and nodes,
#                         etcd) with GOMAXPROCS=N (Redis ignores it);
#                         default: unset, Go's own (the machine's cores)
#   SERVER_GODEBUG=...    run the Go servers with GODEBUG set to this, e.g.
#                         madvdontneed=0 (docs/benchmarks.md); default unset
#   SHOAL_BIN=...         run this shoal binary (servers and load generator)
#                         instead of building the checkout's (bench/ab.sh)
#   PORT_BASE=21000       ports used: PORT_BASE .. PORT_BASE+7500 on 127.0.0.1,
#                         below Linux's ephemeral range (32768..) so that no
#                         outgoing connection of another program takes one
#
# Needs: Go, jq, redis-cli (redis-tools), and for the systems in $SYSTEMS
# etcd (etcd-server), etcdctl (etcd-client) and redis-server. As root with
# apt-get, missing packages are installed.
set -euo pipefail
cd "$(dirname "$0")/.."

PHASE_SECONDS=${PHASE_SECONDS:-20}
WORKLOADS=${WORKLOADS:-load w c a}
RECORDS=${RECORDS:-50000}
CONCURRENCY=${CONCURRENCY:-64}
PIPELINE=${PIPELINE:-1}
RATE=${RATE:-0}
RESP_CLIENT=${RESP_CLIENT:-builtin}
VALUE_SIZE=${VALUE_SIZE:-100}
DISTRIBUTION=${DISTRIBUTION:-uniform}
SYSTEMS=${SYSTEMS:-shoal etcd redis}
SHOAL_TARGETS=${SHOAL_TARGETS:-shoal resp}
MEMDISK=${MEMDISK:-0}
MEMDISK_KEYS=${MEMDISK_KEYS:-1000000}
PORT_BASE=${PORT_BASE:-21000}
SERVER_GOMAXPROCS=${SERVER_GOMAXPROCS:-}
SERVER_GODEBUG=${SERVER_GODEBUG:-}
RESULTS_DIR=${RESULTS_DIR:-${TMPDIR:-/tmp}/shoal-compare-$(date +%Y%m%d-%H%M%S)}
KEEP=${KEEP:-0}
PROFILE=${PROFILE:-0}
TRACE=${TRACE:-0}
profile_urls=() # the nodes' /debug/pprof/profile URLs while Shoal runs (PROFILE=1, TRACE=1)
metrics_urls=() # the nodes' /metrics URLs while Shoal runs
CLK_TCK=$(getconf CLK_TCK)

# Shoal's cluster shape. SHOAL_SHARDS and SHOAL_REPLICAS are also the
# environment defaults of `shoal master`'s --shards and --replicas; the
# flags below pass the same values.
SHOAL_SHARDS=${SHOAL_SHARDS:-64}
SHOAL_NODES=${SHOAL_NODES:-3}
is_count() { case $1 in '' | *[!0-9]*) return 1 ;; *) [ "$1" -ge 1 ] ;; esac }
if ! is_count "$SHOAL_SHARDS"; then
  echo "SHOAL_SHARDS=$SHOAL_SHARDS: want a power of two" >&2
  exit 2
fi
# Node i listens on PORT_BASE+100+i, +180+i and +380+i.
if ! is_count "$SHOAL_NODES" || [ "$SHOAL_NODES" -gt 79 ]; then
  echo "SHOAL_NODES=$SHOAL_NODES: want 1..79" >&2
  exit 2
fi
SHOAL_REPLICAS=${SHOAL_REPLICAS:-$((SHOAL_NODES < 3 ? SHOAL_NODES : 3))}
if ! is_count "$SHOAL_REPLICAS" || [ "$SHOAL_REPLICAS" -gt "$SHOAL_NODES" ]; then
  echo "SHOAL_REPLICAS=$SHOAL_REPLICAS: want 1..SHOAL_NODES ($SHOAL_NODES)" >&2
  exit 2
fi
SHOAL_READY_SECONDS=${SHOAL_READY_SECONDS:-$((SHOAL_SHARDS > 1024 ? SHOAL_SHARDS * 120 / 1024 : 120))}

# --- tools -------------------------------------------------------------------

need_pkgs=()
command -v jq >/dev/null || need_pkgs+=(jq)
command -v redis-cli >/dev/null || need_pkgs+=(redis-tools) # also Shoal's readiness check
case " $SYSTEMS " in *" etcd "*)
  command -v etcd >/dev/null || need_pkgs+=(etcd-server)
  command -v etcdctl >/dev/null || need_pkgs+=(etcd-client)
  ;;
esac
case " $SYSTEMS " in *" redis "*) command -v redis-server >/dev/null || need_pkgs+=(redis-server) ;; esac
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing ${need_pkgs[*]}"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_pkgs[@]}" >/dev/null
  else
    echo "missing: ${need_pkgs[*]} (apt-get install ${need_pkgs[*]})" >&2
    exit 2
  fi
fi

# --- processes and cleanup ---------------------------------------------------

work=$(mktemp -d "${TMPDIR:-/tmp}/shoal-compare.XXXXXX")
mkdir -p "$RESULTS_DIR"
pids=() # every server process this script started and has not stopped

# stop_pids PID...: SIGTERM, up to 15 s to exit, then SIGKILL.
stop_pids() {
  local p deadline=$((SECONDS + 15))
  for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "$@"; do
    while kill -0 "$p" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ ${#pids[@]} -gt 0 ]; then stop_pids "${pids[@]}"; fi
  if [ "$KEEP" = 1 ]; then echo "data kept in $work"; else rm -rf "$work"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

# start NAME LOG CMD...: starts a server in the background, remembers it.
start() {
  local name=$1 log=$2
  shift 2
  if [ -n "$SERVER_GOMAXPROCS" ]; then
    set -- env GOMAXPROCS="$SERVER_GOMAXPROCS" "$@"
  fi
  if [ -n "$SERVER_GODEBUG" ]; then
    set -- env GODEBUG="$SERVER_GODEBUG" "$@"
  fi
  "$@" >"$log" 2>&1 &
  pids+=($!)
  eval "pid_$name=$!"
}

# wait_for SECONDS WHAT CMD...: polls CMD until it succeeds.
wait_for() {
  local limit=$1 what=$2
  shift 2
  local deadline=$((SECONDS + limit)) p
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || fail "$what not ready in ${limit}s (logs in $RESULTS_DIR)"
    for p in "${pids[@]}"; do
      kill -0 "$p" 2>/dev/null || fail "$what: server process $p exited (logs in $RESULTS_DIR)"
    done
    sleep 0.2
  done
}

port_free() { ! ss -ltnH "sport = :$1" | grep -q .; }

check_ports() {
  local p
  for p in "$@"; do port_free "$p" || fail "port $p is in use (set PORT_BASE)"; done
}

# cpu_ticks PID...: summed utime+stime of the processes and of their
# reaped children, in clock ticks.
cpu_ticks() {
  local p sum=0 t
  for p in "$@"; do
    # Fields after "(comm) ": state is $1, utime $12, stime $13, cutime
    # $14, cstime $15.
    t=$(sed 's/^.*) //' "/proc/$p/stat" | awk '{print $12 + $13 + $14 + $15}')
    sum=$((sum + t))
  done
  echo "$sum"
}

# busy_ticks: the machine's busy CPU time (user, nice, system, irq,
# softirq, steal), in clock ticks.
busy_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }

rss_kib() {
  local p sum=0 t
  for p in "$@"; do
    t=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status")
    sum=$((sum + t))
  done
  echo "$sum"
}

# --- the benchmark -----------------------------------------------------------

if [ -n "${SHOAL_BIN:-}" ]; then
  SHOAL=$SHOAL_BIN
else
  echo "== build"
  CGO_ENABLED=0 go build -o "$work/bin/shoal" ./cmd/shoal
  SHOAL=$work/bin/shoal
fi
# A binary older than --resp-client (bench/ab.sh with an old revision) has
# go-redis only.
resp_flags="--resp-client $RESP_CLIENT"
bench_help=$("$SHOAL" bench --help 2>&1)
if [ "$RATE" != 0 ]; then
  case $bench_help in
    *--rate*) ;;
    *) fail "RATE=$RATE: this shoal binary has no bench --rate" ;;
  esac
fi
case $bench_help in
  *--resp-client*) ;;
  *)
    resp_flags=""
    RESP_CLIENT="go-redis (the binary has no --resp-client)"
    ;;
esac

results=$RESULTS_DIR/results.tsv
printf 'system\ttarget\tworkload\tops\terrors\tseconds\tops_per_sec\tp50_ms\tp99_ms\tp999_ms\tcpu_s\tcpu_s_per_1000_ops\tclient_cpu_s\tother_cpu_s\n' >"$results"
memdisk=$RESULTS_DIR/memdisk.tsv
printf 'system\tkeys\trss_mib\tdisk_mib\n' >"$memdisk"

# phases SYSTEM TARGET ENDPOINT_FLAGS PID...: runs every workload, records each.
phases() {
  local system=$1 target=$2 flags=$3
  shift 3
  local w pipe=1
  if [ "$target" = resp ]; then
    pipe=$PIPELINE
    flags="$flags $resp_flags"
  fi
  for w in $WORKLOADS; do
    local json=$RESULTS_DIR/$system-$target-$w.json
    local before after busy0 busy1 client
    echo "-- $system via $target: workload $w"
    local prof_pids=() prof_files=() u n=0 cflags=""
    if [ "$PROFILE" = 1 ] && [ "$w" != load ]; then cflags="--cpu-profile $RESULTS_DIR/$system-$target-$w.client.pprof"; fi
    if [ "$RATE" != 0 ] && [ "$w" != load ]; then cflags="$cflags --rate $RATE"; fi
    if [ "$PROFILE" = 1 ] && [ "$w" != load ] && [ ${#profile_urls[@]} -gt 0 ]; then
      for u in "${profile_urls[@]}"; do
        n=$((n + 1))
        prof_files+=("$RESULTS_DIR/$system-$target-$w.node$n.pprof")
        curl -sf -o "${prof_files[-1]}" "$u?seconds=$((PHASE_SECONDS > 3 ? PHASE_SECONDS - 2 : 1))" &
        prof_pids+=($!)
      done
    fi
    if [ "$TRACE" = 1 ] && [ "$w" != load ] && [ ${#profile_urls[@]} -gt 0 ]; then
      n=0
      for u in "${profile_urls[@]}"; do
        n=$((n + 1))
        curl -sf -o "$RESULTS_DIR/$system-$target-$w.node$n.trace" "${u%/profile}/trace?seconds=$((PHASE_SECONDS > 3 ? PHASE_SECONDS - 2 : 1))" &
        prof_pids+=($!)
      done
    fi
    raft_counters >"$RESULTS_DIR/$system-$target-$w.raft0"
    leaders_line
    busy0=$(busy_ticks)
    before=$(cpu_ticks "$@")
    # Bounded: the load stops after RECORDS inserts, the others after
    # PHASE_SECONDS; timeout catches a stuck run. bash's time gives the
    # client's CPU seconds.
    # shellcheck disable=SC2086
    client=$( {
      TIMEFORMAT='%3U %3S'
      time timeout -k 10 $((PHASE_SECONDS + 600)) "$SHOAL" bench --target "${target%-unary}" $flags $cflags \
        --workload "$w" --records "$RECORDS" --concurrency "$CONCURRENCY" --pipeline "$pipe" --value-size "$VALUE_SIZE" \
        --distribution "$DISTRIBUTION" --duration "${PHASE_SECONDS}s" --json >"$json" 2>"$json.progress" || true
    } 2>&1 | awk '{print $1 + $2}')
    after=$(cpu_ticks "$@")
    busy1=$(busy_ticks)
    raft_counters >"$RESULTS_DIR/$system-$target-$w.raft1"
    raft_deltas "$RESULTS_DIR/$system-$target-$w" "$(jq -r '.ops // 0' "$json" 2>/dev/null || echo 0)"
    if [ ${#prof_pids[@]} -gt 0 ]; then
      wait "${prof_pids[@]}" || fail "$system via $target, workload $w: a profile or trace failed"
    fi
    if [ "$PROFILE" = 1 ] && [ ${#prof_files[@]} -gt 0 ]; then
      go tool pprof -proto "${prof_files[@]}" >"$RESULTS_DIR/$system-$target-$w.pprof" 2>/dev/null ||
        fail "merging the CPU profiles of $system via $target, workload $w"
      echo "   profile: $RESULTS_DIR/$system-$target-$w.pprof"
    fi
    if ! jq -e .ops "$json" >/dev/null 2>&1; then
      tail -n 5 "$json.progress" >&2
      fail "$system via $target, workload $w: no result"
    fi
    # other_cpu_s: what the rest of the machine used meanwhile (noise).
    jq -r --arg s "$system" --arg t "$target" --arg cpu "$((after - before))" --arg busy "$((busy1 - busy0))" --arg tck "$CLK_TCK" \
      --arg client "$client" '
      ($tck | tonumber) as $tck
      | (($cpu | tonumber) / $tck) as $c
      | ($client | tonumber) as $cl
      | ([(($busy | tonumber) / $tck) - $c - $cl, 0] | max) as $other
      | def r2: . * 100 | round / 100;
      [$s, $t, .workload, .ops, .errors, (.seconds | r2), (.ops_per_sec | round),
       (.all.p50_ms | r2), (.all.p99_ms | r2), (.all.p999_ms | r2), ($c | r2),
       (if .ops > 0 then ($c / .ops * 1000 * 1000 | round / 1000) else 0 end), ($cl | r2), ($other | r2)] | @tsv' "$json" |
      tee -a "$results"
    local errs
    errs=$(jq -r '.errors // 0' "$json")
    if [ "$errs" != 0 ]; then
      echo "   warning: $errs operations failed in this phase; they are left out of its ops and latencies (see $json.progress)" >&2
    fi
  done
}

# raft_counters prints the Shoal nodes' Raft counters (shoal_raft_*_total,
# with their labels), summed over the nodes; nothing for other systems. A
# node that does not answer makes it print nothing (and warn): a partial
# sum would give wrong deltas.
raft_counters() {
  local u out
  [ ${#metrics_urls[@]} -gt 0 ] || return 0
  for u in "${metrics_urls[@]}"; do
    if ! out+=$(curl -sf --max-time 5 "$u")$'\n'; then
      echo "   warning: no metrics from $u; no Raft counters for this workload" >&2
      return 0
    fi
  done
  printf '%s' "$out" |
    awk '/^shoal_raft_[a-z_]*_total[{ ]/ {a[$1] += $2} END {for (k in a) printf "%s %.0f\n", k, a[k]}' | LC_ALL=C sort
}

# leaders_line prints how many shards each Shoal node leads as a phase
# starts, so that a slow run can be told from one whose leaders were
# unevenly spread (then one node's store loop serves most writes).
leaders_line() {
  local u out=""
  [ ${#metrics_urls[@]} -gt 0 ] || return 0
  for u in "${metrics_urls[@]}"; do
    out+=" $(curl -sf --max-time 5 "$u" | awk '/^shoal_raft_replicas\{role="leader"\}/ {n = $2} END {print n + 0}')"
  done
  echo "   leaders per node:$out"
}

# raft_deltas PREFIX OPS writes PREFIX.raft.tsv, each Raft counter's growth
# over the phase and per operation, from PREFIX.raft0 and PREFIX.raft1, and
# prints the messages sent per operation.
raft_deltas() {
  local prefix=$1 ops=$2
  if [ ! -s "$prefix.raft0" ] || [ ! -s "$prefix.raft1" ]; then
    rm -f "$prefix.raft0" "$prefix.raft1"
    return 0
  fi
  LC_ALL=C join -a 2 -e 0 -o 0,1.2,2.2 "$prefix.raft0" "$prefix.raft1" |
    awk -v ops="$ops" 'BEGIN {OFS = "\t"; print "counter", "delta", "per_op"}
      {d = $3 - $2; print $1, d, (ops > 0 ? sprintf("%.3f", d / ops) : 0)}' >"$prefix.raft.tsv"
  rm -f "$prefix.raft0" "$prefix.raft1"
  awk -F '\t' '$1 == "shoal_raft_messages_sent_total" {m = $3}
    $1 == "shoal_raft_empty_appends_sent_total" {e = $3}
    $1 == "shoal_raft_loop_iterations_total" {it = $3}
    END {if (m != "") printf "   raft: per op, %s messages sent (%s empty appends), %s store loop iterations\n", m, e, it}' "$prefix.raft.tsv"
}

# load_memdisk SYSTEM FLAGS DATA_DIRS PIDS: loads MEMDISK_KEYS keys, then
# records the servers' summed RSS and the data directories' size.
load_memdisk() {
  local system=$1 target=$2 flags=$3 dirs=$4
  shift 4
  echo "-- $system: loading $MEMDISK_KEYS keys for memory and disk"
  # shellcheck disable=SC2086
  timeout -k 10 3600 "$SHOAL" bench --target "$target" $flags --workload load --records "$MEMDISK_KEYS" \
    --concurrency "$CONCURRENCY" --value-size "$VALUE_SIZE" --json >"$RESULTS_DIR/$system-memdisk-load.json" \
    2>"$RESULTS_DIR/$system-memdisk-load.progress" || fail "$system: loading $MEMDISK_KEYS keys failed"
  sleep 5 # let flushes that follow the load start; this is a reading, not a wait for a condition
  local rss disk
  rss=$(rss_kib "$@")
  # shellcheck disable=SC2086
  disk=$(du -sb $dirs | awk '{s += $1} END {print s}')
  printf '%s\t%s\t%s\t%s\n' "$system" "$MEMDISK_KEYS" "$((rss / 1024))" "$((disk / 1024 / 1024))" | tee -a "$memdisk"
}

run_shoal() {
  local base=$PORT_BASE mport=$((PORT_BASE + 0)) mhttp=$((PORT_BASE + 80)) i
  check_ports $mport $mhttp
  for i in $(seq "$SHOAL_NODES"); do check_ports $((base + 100 + i)) $((base + 180 + i)) $((base + 380 + i)); done
  echo "== shoal: 1 master + $SHOAL_NODES nodes, $SHOAL_SHARDS shards x $SHOAL_REPLICAS replicas"
  local d=$work/shoal
  mkdir -p "$d"
  start shoal_master "$RESULTS_DIR/shoal-master.log" "$SHOAL" master --bootstrap --shards "$SHOAL_SHARDS" \
    --replicas "$SHOAL_REPLICAS" --listen 127.0.0.1:$mport --http 127.0.0.1:$mhttp --data-dir "$d/master" --log-level warn
  local nodes=() resp=()
  for i in $(seq "$SHOAL_NODES"); do
    start "shoal_node$i" "$RESULTS_DIR/shoal-node$i.log" "$SHOAL" node --master 127.0.0.1:$mport \
      --listen 127.0.0.1:$((base + 100 + i)) --http 127.0.0.1:$((base + 180 + i)) \
      --resp 127.0.0.1:$((base + 380 + i)) --data-dir "$d/node$i" --log-level warn
    eval "nodes+=(\$pid_shoal_node$i)"
    resp+=("127.0.0.1:$((base + 380 + i))")
    profile_urls+=("http://127.0.0.1:$((base + 180 + i))/debug/pprof/profile")
    metrics_urls+=("http://127.0.0.1:$((base + 180 + i))/metrics")
  done
  # Ready when all SHOAL_SHARDS shards show a leader.
  shoal_led() {
    [ "$("$SHOAL" cluster status --master 127.0.0.1:"$mport" --timeout 2s | grep -cE '^[0-9]+ +[0-9]+-[0-9]+ +[0-9]+ +node [0-9]+')" = "$SHOAL_SHARDS" ]
  }
  wait_for "$SHOAL_READY_SECONDS" "shoal cluster" shoal_led
  wait_for 30 "shoal redis port" sh -c "redis-cli -p $((base + 381)) cluster info | grep -q cluster_state:ok"
  "$SHOAL" cluster status --master 127.0.0.1:$mport | sed -n '/^NODE/,/^$/p'
  local spids=("$pid_shoal_master" "${nodes[@]}")
  local t
  for t in $SHOAL_TARGETS; do
    case $t in
      shoal) phases shoal shoal "--master 127.0.0.1:$mport" "${spids[@]}" ;;
      shoal-unary) phases shoal shoal-unary "--master 127.0.0.1:$mport --unary" "${spids[@]}" ;;
      resp) phases shoal resp "--endpoints $(
        IFS=,
        echo "${resp[*]}"
      )" "${spids[@]}" ;;
      *) fail "SHOAL_TARGETS: unknown target $t" ;;
    esac
  done
  if [ "$MEMDISK" = 1 ]; then
    load_memdisk shoal shoal "--master 127.0.0.1:$mport" "$d" "${spids[@]}"
  fi
  stop_pids "${spids[@]}"
  pids=()
  profile_urls=()
  metrics_urls=()
}

run_etcd() {
  local c1=$((PORT_BASE + 2379)) i cluster="" eps=() dirs=()
  for i in 1 2 3; do
    local cp=$((c1 + (i - 1) * 10)) pp=$((c1 + (i - 1) * 10 + 1))
    check_ports $cp $pp
    cluster+="${cluster:+,}e$i=http://127.0.0.1:$pp"
    eps+=("127.0.0.1:$cp")
  done
  echo "== etcd $(etcd --version | head -1 | awk '{print $3}'): 3 members"
  local epids=()
  for i in 1 2 3; do
    local cp=$((c1 + (i - 1) * 10)) pp=$((c1 + (i - 1) * 10 + 1)) dir=$work/etcd/e$i
    mkdir -p "$dir"
    dirs+=("$dir")
    start "etcd$i" "$RESULTS_DIR/etcd$i.log" etcd --name "e$i" --data-dir "$dir" \
      --listen-client-urls "http://127.0.0.1:$cp" --advertise-client-urls "http://127.0.0.1:$cp" \
      --listen-peer-urls "http://127.0.0.1:$pp" --initial-advertise-peer-urls "http://127.0.0.1:$pp" \
      --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token shoal-compare \
      --logger zap --log-level warn
    eval "epids+=(\$pid_etcd$i)"
  done
  local eplist
  eplist=$(
    IFS=,
    echo "${eps[*]}"
  )
  wait_for 60 "etcd cluster" env ETCDCTL_API=3 etcdctl --endpoints "$eplist" --command-timeout 2s endpoint health
  ETCDCTL_API=3 etcdctl --endpoints "$eplist" endpoint status -w table
  phases etcd etcd "--endpoints $eplist" "${epids[@]}"
  if [ "$MEMDISK" = 1 ]; then
    load_memdisk etcd etcd "--endpoints $eplist" "${dirs[*]}" "${epids[@]}"
  fi
  stop_pids "${epids[@]}"
  pids=()
}

run_redis() {
  local p1=$((PORT_BASE + 6400)) i ports=() rpids=()
  for i in 0 1 2 3 4 5; do
    ports+=($((p1 + i)))
    check_ports $((p1 + i)) $((p1 + i + 1000))
  done
  echo "== redis $(redis-server --version | awk '{print $3}'): cluster of 3 masters + 3 replicas, appendfsync always"
  for p in "${ports[@]}"; do
    local dir=$work/redis/$p
    mkdir -p "$dir"
    start "redis$p" "$RESULTS_DIR/redis-$p.log" redis-server --port "$p" --bind 127.0.0.1 --dir "$dir" \
      --cluster-enabled yes --cluster-port $((p + 1000)) --cluster-config-file nodes.conf --cluster-node-timeout 5000 \
      --appendonly yes --appendfsync always --save "" --daemonize no
    eval "rpids+=(\$pid_redis$p)"
  done
  for p in "${ports[@]}"; do wait_for 30 "redis $p" redis-cli -p "$p" ping; done
  local addrs=()
  for p in "${ports[@]}"; do addrs+=("127.0.0.1:$p"); done
  timeout 60 redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes >"$RESULTS_DIR/redis-create.log" 2>&1 ||
    fail "redis-cli --cluster create (see $RESULTS_DIR/redis-create.log)"
  redis_ok() {
    local p
    for p in "${ports[@]}"; do
      redis-cli -p "$p" cluster info | grep -q cluster_state:ok || return 1
      redis-cli -p "$p" cluster info | grep -q cluster_known_nodes:6 || return 1
    done
    # Every master has its replica attached and in sync.
    [ "$(for p in "${ports[@]}"; do redis-cli -p "$p" info replication; done | grep -c 'state=online')" = 3 ]
  }
  wait_for 60 "redis cluster" redis_ok
  local eplist
  eplist=$(
    IFS=,
    echo "${addrs[*]:0:3}"
  )
  phases redis resp "--endpoints $eplist" "${rpids[@]}"
  stop_pids "${rpids[@]}"
  pids=()
}

echo "== results in $RESULTS_DIR"
# What produced these numbers, for rerunning them.
{
  echo "command: $0 $*"
  echo "date: $(date -u +%FT%TZ)"
  echo "revision: $(git describe --always --dirty 2>/dev/null || echo unknown)"
  echo "binary: $SHOAL ($("$SHOAL" version 2>/dev/null | head -n 1))"
  echo "settings: PHASE_SECONDS=$PHASE_SECONDS WORKLOADS=\"$WORKLOADS\" RECORDS=$RECORDS CONCURRENCY=$CONCURRENCY RATE=$RATE PIPELINE=$PIPELINE RESP_CLIENT=\"$RESP_CLIENT\" VALUE_SIZE=$VALUE_SIZE DISTRIBUTION=$DISTRIBUTION SYSTEMS=\"$SYSTEMS\" SHOAL_TARGETS=\"$SHOAL_TARGETS\" SHOAL_SHARDS=$SHOAL_SHARDS SHOAL_NODES=$SHOAL_NODES SHOAL_REPLICAS=$SHOAL_REPLICAS"
  echo "environment:"
  # Values of secrets (SHOAL_RESP_PASSWORD, GOAUTH, a proxy's user:token@)
  # are left out.
  env | grep -E '^(SHOAL_|GO[A-Z]*=|SERVER_)' | LC_ALL=C sort |
    sed -E 's/^([^=]*(PASSWORD|TOKEN|SECRET|AUTH)[^=]*)=.*/\1=<redacted>/; s#://[^/@]*@#://<redacted>@#g; s/^/  /' || true
  echo "servers: $(etcd --version 2>/dev/null | head -n 1); $(redis-server --version 2>/dev/null)"
  echo "machine: $(nproc) CPUs, $(awk '/^MemTotal/ {print $2 / 1048576 " GiB"}' /proc/meminfo)"
} >"$RESULTS_DIR/settings.txt"
for s in $SYSTEMS; do
  case $s in
    shoal) run_shoal ;;
    etcd) run_etcd ;;
    redis) run_redis ;;
    *) fail "SYSTEMS: unknown system $s" ;;
  esac
done

echo
shape=
case " $SYSTEMS " in *" shoal "*) shape=", shoal: $SHOAL_SHARDS shards, $SHOAL_NODES nodes, $SHOAL_REPLICAS replicas" ;; esac
[ "$RATE" != 0 ] && shape+=", open loop at $RATE ops/s"
[ -n "$SERVER_GOMAXPROCS" ] && shape+=", servers with GOMAXPROCS=$SERVER_GOMAXPROCS"
[ -n "$SERVER_GODEBUG" ] && shape+=", servers with GODEBUG=$SERVER_GODEBUG"
echo "== $(nproc) CPUs, $CONCURRENCY clients, pipeline $PIPELINE (RESP, $RESP_CLIENT client), $VALUE_SIZE-byte values, $RECORDS keys ($DISTRIBUTION), ${PHASE_SECONDS}s per timed workload$shape"
column -t -s $'\t' "$results"
if [ "$MEMDISK" = 1 ]; then
  echo
  column -t -s $'\t' "$memdisk"
fi
echo
echo "results: $results"
