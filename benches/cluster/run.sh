#!/usr/bin/env bash
# Cluster load run (issue 8 acceptance): 6 `customws serve` nodes sharing one Redis 7, holding
# together >= 100,000 authenticated connections opened by several customws-bench processes
# (each < 19k sockets, its own 127.0.0.x source addresses and user range), then a cross-node
# P2P run measured while those connections are held, against the same P2P run on one node.
#
# Phases (all JSON lines go to $RESULTS):
#   1. single node (no Redis): p2p, P2P_USERS users, the reference figure;
#   2. redis-server + NODES nodes (--shards 1 each); p2p over all nodes, nothing else held,
#      with random targets ((n-1)/n cross nodes) and with --cross-node-only (HOLD=0 stops here);
#   3. p2p users connected and parked (--wait-file), then HOLD_PROCS hold processes open
#      CONNS connections over all nodes; handshakes/s, RSS per connection per node, idle CPU;
#   4. the parked p2p users run their window while CONNS connections are held;
#   5. everything is killed (nodes and Redis first: closing 100k connections in front of
#      live nodes would only produce a presence-offline storm nobody measures).
#
# Usage: benches/cluster/run.sh [--skip-build]
# NODE_FLAGS: extra flags for every node (e.g. "--presence-fanout off", which lets every
# held connection be a distinct user: HOLD_USERS=17000).
# Environment (defaults): NODES=6 CONNS=102000 HOLD_PROCS=6 HOLD_USERS=1001 (users per hold
#   process; connections cycle over them) P2P_USERS=1000 IN_FLIGHT=16 DURATION=5 RESULTS=dir
# Needs: redis-server >= 7 (and redis-cli), curl, jq, ss, bc, nstat (iproute2).
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$(pwd)
NODES=${NODES:-6}
CONNS=${CONNS:-102000}
HOLD_PROCS=${HOLD_PROCS:-6}
HOLD_USERS=${HOLD_USERS:-1001}
P2P_USERS=${P2P_USERS:-1000}
IN_FLIGHT=${IN_FLIGHT:-16}
DURATION=${DURATION:-5}
BUILD=1
for arg in "$@"; do
    case $arg in
        --skip-build) BUILD=0 ;;
        *) echo "unknown argument: $arg" >&2; exit 2 ;;
    esac
done
RESULTS=${RESULTS:-$ROOT/target/cluster/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$RESULTS"
SECRET=cluster-bench-secret-0123456789abcdef0123
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
for tool in redis-server redis-cli curl jq ss bc nstat; do
    command -v "$tool" >/dev/null || { echo "run.sh needs $tool" >&2; exit 2; }
done
if [ "$BUILD" = 1 ]; then
    cargo build --release --bin customws --bin customws-bench
fi
CUSTOMWS=$ROOT/target/release/customws
BENCH=$ROOT/target/release/customws-bench
PER_PROC=$(( (CONNS + HOLD_PROCS - 1) / HOLD_PROCS ))
if [ "$PER_PROC" -gt 19000 ]; then
    echo "CONNS/HOLD_PROCS = $PER_PROC > 19000 sockets for one process: raise HOLD_PROCS" >&2
    exit 2
fi

PIDS=()          # every process this script started, killed at exit
NODE_PIDS=()
NODE_PORTS=()
ADMIN_PORTS=()
REDIS_PID=
cleanup() {
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

# Ports below 32768 (outside the ephemeral range), not listened on, not handed out before.
USED_PORTS=" "
free_port() {
    local p
    while :; do
        p=$(( 20000 + RANDOM % 12000 ))
        case $USED_PORTS in *" $p "*) continue ;; esac
        if ! ss -Hltn "sport = :$p" | grep -q .; then USED_PORTS="$USED_PORTS$p "; echo "$p"; return; fi
    done
}
listen_overflows() { nstat -saz TcpExtListenOverflows 2>/dev/null | awk '$1 == "TcpExtListenOverflows" { print $2; f = 1 } END { if (!f) print 0 }'; }
log() { echo "[$(date -u +%H:%M:%S)] $*"; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }       # 10 ms ticks
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
metric() {  # metric ADMIN_PORT NAME: sum over its samples (every shard), 0 when absent
    curl -m 3 -fsS "http://127.0.0.1:$1/metrics" 2>/dev/null |
        awk -v n="$2" '$1 == n || index($1, n "{") == 1 { s += $2 } END { printf "%d\n", s }'
}
total_connections() {
    local sum=0 v
    for a in "${ADMIN_PORTS[@]}"; do v=$(metric "$a" customws_connections); sum=$(( sum + v )); done
    echo "$sum"
}
wait_healthy() {  # wait_healthy ADMIN_PORT
    for _ in $(seq 1 200); do
        curl -fsS "http://127.0.0.1:$1/healthz" >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    echo "node on admin port $1 never became healthy" >&2
    return 1
}
start_node() {  # start_node NAME [cluster flags...]
    local name=$1 port aport; shift
    port=$(free_port); aport=$(free_port)
    "$CUSTOMWS" serve --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$aport" --shards 1 \
        --jwt-secret "$SECRET" --rate-limit 1000000000 --rate-burst 1000000000 \
        --max-connections 19800 --max-connections-per-user 100000 \
        --log-level warn ${NODE_FLAGS:-} "$@" >"$RESULTS/$name.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid"); NODE_PIDS+=("$pid"); NODE_PORTS+=("$port"); ADMIN_PORTS+=("$aport")
    wait_healthy "$aport"
}
stop_nodes() {
    for p in "${NODE_PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    for p in "${NODE_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    NODE_PIDS=(); NODE_PORTS=(); ADMIN_PORTS=()
}
targets() { local IFS=,; local t=(); for p in "${NODE_PORTS[@]}"; do t+=("127.0.0.1:$p"); done; echo "${t[*]}"; }
node_pids() { local IFS=,; echo "${NODE_PIDS[*]}"; }
thread_cpu() {  # "thread-name ticks", summed over every node's threads of that name
    for p in "${NODE_PIDS[@]}"; do
        for t in /proc/"$p"/task/*; do
            echo "$(cat "$t/comm" 2>/dev/null) $(awk '{ print $14 + $15 }' "$t/stat" 2>/dev/null)"
        done
    done | awk 'NF == 2 { s[$1] += $2 } END { for (k in s) print k, s[k] }' | sort
}
ctx_switches() {  # voluntary + involuntary context switches of every node thread
    for p in "${NODE_PIDS[@]}"; do cat /proc/"$p"/task/*/status 2>/dev/null; done |
        awk '/^(non)?voluntary_ctxt_switches:/ { s += $2 } END { printf "%d\n", s }'
}
bridge_totals() {  # publishes batches received, summed over the nodes
    local p=0 b=0 r=0
    for a in "${ADMIN_PORTS[@]}"; do
        p=$(( p + $(metric "$a" customws_cluster_publishes_total) ))
        b=$(( b + $(metric "$a" customws_cluster_publish_batches_total) ))
        r=$(( r + $(metric "$a" customws_cluster_received_total) ))
    done
    echo "$p $b $r"
}
cluster_p2p() {  # cluster_p2p NAME [extra bench flags]: a p2p run over all nodes, nothing held
    local name=$1; shift
    local t0 t1 m0 m1 c0 c1 redis=()
    [ -n "$REDIS_PID" ] && redis=(--redis-pid "$REDIS_PID")
    t0=$(thread_cpu); m0=$(bridge_totals); c0=$(ctx_switches)
    # shellcheck disable=SC2046
    "$BENCH" $(p2p_args) --targets "$(targets)" "${redis[@]}" --label "$name" "$@" \
        | tee "$RESULTS/p2p-$name.txt"
    tail -n1 "$RESULTS/p2p-$name.txt" >"$RESULTS/p2p-$name.json"
    t1=$(thread_cpu); m1=$(bridge_totals); c1=$(ctx_switches)
    {
        jq -r --arg c "$(( c1 - c0 ))" '"  node context switches over the invocation: \($c) = \((($c|tonumber) / .delivered * 1000 | floor) / 1000) per delivery"' "$RESULTS/p2p-$name.json"
        echo "$name: node CPU by thread over the whole invocation (connect + warm-up + window + drain), ms:"
        join <(echo "$t0") <(echo "$t1") | awk '{ printf "  %-18s %8d\n", $1, ($3 - $2) * 10 }'
        echo "$m0 $m1" | awk '{ p = $4 - $1; b = $5 - $2; r = $6 - $3;
            printf "  bridges: %d publishes in %d batches (%.1f per batch), %d messages received from Redis\n", p, b, (b ? p / b : 0), r }'
    } | tee "$RESULTS/p2p-$name-threads.txt"
    sleep 2   # offline events of those users
}
p2p_args() {
    echo p2p --users "$P2P_USERS" --in-flight "$IN_FLIGHT" --duration "$DURATION" --warmup 1 \
        --drain 3 --jwt-secret "$SECRET" --server-pid "$(node_pids)"
}

{
echo "machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2/1048576 }' /proc/meminfo), $(uname -r)"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "customws: $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (dirty)')"
echo "redis: $(redis-server --version | awk '{ print $3 }')"
echo "NODES=$NODES CONNS=$CONNS HOLD_PROCS=$HOLD_PROCS HOLD_USERS=$HOLD_USERS P2P_USERS=$P2P_USERS IN_FLIGHT=$IN_FLIGHT DURATION=$DURATION"
} | tee "$RESULTS/machine.txt"

# ---- 1. single node, no Redis -----------------------------------------------------------
log "1. single node: p2p $P2P_USERS users"
start_node single
cluster_p2p single
stop_nodes

# ---- 2. Redis + NODES nodes ---------------------------------------------------------------
RPORT=$(free_port)
redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no \
    --client-output-buffer-limit 'pubsub 0 0 0' --maxclients 1000 \
    --logfile "$RESULTS/redis.log" &
REDIS_PID=$!
PIDS+=("$REDIS_PID")
for _ in $(seq 1 100); do
    redis-cli -p "$RPORT" ping >/dev/null 2>&1 && break
    sleep 0.05
done
log "2. redis on :$RPORT (pid $REDIS_PID); starting $NODES nodes"
for k in $(seq 1 "$NODES"); do
    start_node "node$k" --cluster-redis "redis://127.0.0.1:$RPORT" --node-id "node$k" \
        --presence-heartbeat 1s
done
log "nodes: pids $(node_pids), ports ${NODE_PORTS[*]}"
sleep 2   # the nodes hear each other's heartbeats and snapshots
if [ "${HOLD:-1}" = 0 ]; then   # HOLD=0: only the runs without held connections
    cluster_p2p cluster-idle --user-offset 5000000 --source-first 200
    cluster_p2p cluster-idle-cross --user-offset 6000000 --source-first 200 --cross-node-only
    exit 0
fi

log "2. cluster p2p, nothing else held (random targets, then cross-node targets only)"
cluster_p2p cluster-idle --user-offset 5000000 --source-first 200
cluster_p2p cluster-idle-cross --user-offset 6000000 --source-first 200 --cross-node-only

# ---- 3. park the p2p users, then open CONNS held connections ------------------------------
log "3. p2p users connect and wait"
rm -f "$RESULTS/go-p2p" "$RESULTS/go-close"
# shellcheck disable=SC2046
"$BENCH" $(p2p_args) --targets "$(targets)" --redis-pid "$REDIS_PID" --source-first 220 \
    --wait-file "$RESULTS/go-p2p" --connect-timeout 120 --label cluster-100k \
    >"$RESULTS/p2p-cluster-held.txt" 2>&1 &
P2P_PID=$!
PIDS+=("$P2P_PID")
for _ in $(seq 1 600); do
    [ "$(total_connections)" -ge "$P2P_USERS" ] && break
    sleep 0.1
done
log "   $(total_connections) connections open"

declare -A RSS0
for i in "${!NODE_PIDS[@]}"; do RSS0[$i]=$(rss_kib "${NODE_PIDS[$i]}"); done
CPU0=0; for p in "${NODE_PIDS[@]}"; do CPU0=$(( CPU0 + $(cpu_ticks "$p") )); done
RCPU0=$(cpu_ticks "$REDIS_PID")
log "3. $HOLD_PROCS hold processes x $PER_PROC connections ($HOLD_USERS users each)"
OVF0=$(listen_overflows)
T0=$(date +%s.%N)
HOLD_PIDS=()
for k in $(seq 0 $(( HOLD_PROCS - 1 ))); do
    "$BENCH" hold --targets "$(targets)" --connections "$PER_PROC" --hold-users "$HOLD_USERS" \
        --user-offset $(( 1000000 + k * 100000 )) --source-first $(( 2 + k * 16 )) --source-ips 16 \
        --jwt-secret "$SECRET" --hold-for 0 --wait-file "$RESULTS/go-close" --connect-timeout 300 \
        --label "hold-$k" >"$RESULTS/hold-$k.txt" 2>&1 &
    HOLD_PIDS+=("$!"); PIDS+=("$!")
done
TARGET=$(( P2P_USERS + PER_PROC * HOLD_PROCS ))
LAST=0; STALL=0; T1=$T0
while :; do
    N=$(total_connections)
    if [ "$N" -gt "$LAST" ]; then T1=$(date +%s.%N); STALL=0; else STALL=$(( STALL + 1 )); fi
    if [ "$N" -ge "$TARGET" ]; then break; fi
    [ "$STALL" -ge 60 ] && { log "   no progress for 30 s at $N connections"; break; }
    LAST=$N
    sleep 0.5
done
OVF1=$(listen_overflows)
CONNECTED=$(( $(total_connections) - P2P_USERS ))
ELAPSED=$(echo "$T1 - $T0" | bc -l)
log "   $CONNECTED held connections open after ${ELAPSED} s = $(echo "$CONNECTED / $ELAPSED" | bc) upgrades/s"
CPU1=0; for p in "${NODE_PIDS[@]}"; do CPU1=$(( CPU1 + $(cpu_ticks "$p") )); done
RCPU1=$(cpu_ticks "$REDIS_PID")
log "   server CPU during the storm: $(( (CPU1 - CPU0) * 10 )) ms (sum of nodes), redis $(( (RCPU1 - RCPU0) * 10 )) ms"

log "   letting presence traffic settle (until the nodes use < 20% of a core, at most 120 s)"
for _ in $(seq 1 120); do
    Q0=0; for p in "${NODE_PIDS[@]}"; do Q0=$(( Q0 + $(cpu_ticks "$p") )); done
    sleep 1
    Q1=0; for p in "${NODE_PIDS[@]}"; do Q1=$(( Q1 + $(cpu_ticks "$p") )); done
    [ $(( Q1 - Q0 )) -lt 20 ] && break
done
T2=$(date +%s.%N)
CPU2=0; for p in "${NODE_PIDS[@]}"; do CPU2=$(( CPU2 + $(cpu_ticks "$p") )); done
SLOW=0; for a in "${ADMIN_PORTS[@]}"; do SLOW=$(( SLOW + $(metric "$a" 'customws_closes_total{reason="slow_consumer"}') )); done
{
echo "held connections: $CONNECTED (+ $P2P_USERS parked p2p users) in $ELAPSED s"
echo "upgrades/s: $(echo "$CONNECTED / $ELAPSED" | bc)"
echo "server CPU during the storm: $(( (CPU1 - CPU0) * 10 )) ms (sum of nodes); per upgrade: $(echo "($CPU1 - $CPU0) * 10000 / $CONNECTED" | bc -l | cut -c1-6) µs"
echo "redis CPU during the storm: $(( (RCPU1 - RCPU0) * 10 )) ms"
echo "listen queue overflows during the storm (TcpExtListenOverflows, whole machine): $(( OVF1 - OVF0 ))"
echo "settled $(echo "$T2 - $T1" | bc -l | cut -c1-5) s after the last upgrade; node CPU from the first upgrade to settled: $(( (CPU2 - CPU0) * 10 )) ms = $(echo "($CPU2 - $CPU0) * 10000 / $CONNECTED" | bc -l | cut -c1-6) µs per connection (presence fan-out included)"
echo "slow-consumer closes on the nodes: $SLOW"
echo "node  pid  connections  RSS_before_KiB  RSS_after_KiB  bytes_per_conn  presence_events  bytes_out"
for i in "${!NODE_PIDS[@]}"; do
    a=${ADMIN_PORTS[$i]}
    c=$(metric "$a" customws_connections)
    r=$(rss_kib "${NODE_PIDS[$i]}")
    echo "node$(( i + 1 )) ${NODE_PIDS[$i]} $c ${RSS0[$i]} $r $(( (r - RSS0[$i]) * 1024 / (c > 0 ? c : 1) )) $(metric "$a" customws_presence_events_total) $(metric "$a" customws_bytes_out_total)"
done
echo "redis RSS: $(rss_kib "$REDIS_PID") KiB"
# Idle cost of holding everything (pings every 25 s, presence heartbeats every 1 s), twice.
bytes_out() { local b=0; for a in "${ADMIN_PORTS[@]}"; do b=$(( b + $(metric "$a" customws_bytes_out_total) )); done; echo "$b"; }
for round in 1 2 3; do
    I0=$(thread_cpu); IR0=$(cpu_ticks "$REDIS_PID"); B0=$(bytes_out)
    sleep 5
    I1=$(thread_cpu); IR1=$(cpu_ticks "$REDIS_PID"); B1=$(bytes_out)
    echo "idle CPU while holding, 5 s window $round, % of one core: redis $(( (IR1 - IR0) * 2 ))%, nodes by thread:" \
        "$(join <(echo "$I0") <(echo "$I1") | awk '$3 > $2 { printf "%s %d%%  ", $1, ($3 - $2) * 2 }')" \
        "bytes written to clients: $(( (B1 - B0) / 5 / 1024 )) KiB/s"
done
} | tee "$RESULTS/hold.txt"

# ---- 4. cross-node p2p with everything held ------------------------------------------------
log "4. cross-node p2p while $CONNECTED connections are held"
touch "$RESULTS/go-p2p"
# The p2p process closes its users after printing its figures' window; wait for its line.
while kill -0 "$P2P_PID" 2>/dev/null; do sleep 0.2; done
wait "$P2P_PID" || true
cat "$RESULTS/p2p-cluster-held.txt"
tail -n1 "$RESULTS/p2p-cluster-held.txt" >"$RESULTS/p2p-cluster-held.json"

# ---- 5. teardown ------------------------------------------------------------------------------
log "5. teardown"
stop_nodes
kill -9 "$REDIS_PID" 2>/dev/null || true
touch "$RESULTS/go-close"
for p in "${HOLD_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
for k in $(seq 0 $(( HOLD_PROCS - 1 ))); do
    tail -n1 "$RESULTS/hold-$k.txt" | jq -c '{label: .label, connected: .connected, connect_failed: .connect_failed, handshakes_per_s: .handshakes_per_s, connect_seconds: .connect_seconds, p50_ms: (.handshake_latency.p50_us/1000), p99_ms: (.handshake_latency.p99_us/1000)}' 2>/dev/null \
        || tail -n3 "$RESULTS/hold-$k.txt"
done | tee "$RESULTS/hold-procs.txt"

# ---- summary -------------------------------------------------------------------------------
S=$RESULTS/p2p-single.json; C=$RESULTS/p2p-cluster-idle.json; X=$RESULTS/p2p-cluster-idle-cross.json
H=$RESULTS/p2p-cluster-held.json
{
echo
echo "== summary ($RESULTS)"
printf '%-28s %14s %14s %14s %10s %8s\n' run deliveries/s "nodes ns/del" "redis ns/del" cross lost
for f in "$S" "$C" "$X" "$H"; do
    jq -r '[.label, (.msgs_per_s|floor), (.server_cpu_ns_per_msg|floor), ((.redis_cpu_ns_per_msg // 0)|floor), ((.cross_node_fraction // 0)*1000|floor/10), .lost] | @tsv' "$f" \
        | awk -F'\t' '{ printf "%-28s %14s %14s %14s %9s%% %8s\n", $1, $2, $3, $4, $5, $6 }'
done
echo "ratios against the single node (cluster/single):"
for f in "$C" "$X" "$H"; do
    jq -r --slurpfile s "$S" '"  \(.label): deliveries/s \(.msgs_per_s / $s[0].msgs_per_s * 100 | floor / 100), CPU per delivery nodes \(.server_cpu_ns_per_msg / $s[0].server_cpu_ns_per_msg * 100 | floor / 100), nodes+redis \(((.server_cpu_ns_per_msg + .redis_cpu_ns_per_msg) / $s[0].server_cpu_ns_per_msg) * 100 | floor / 100)"' "$f"
done
} | tee "$RESULTS/summary.txt"
