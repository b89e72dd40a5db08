#!/usr/bin/env bash
# Side-by-side comparison: customws against a tokio-tungstenite echo server and an idiomatic
# tokio gateway (benches/peers/), under the same loads from customws-bench, plus the "floor"
# (benches/peers/mio-floor: a bare mio echo loop that only unmasks, no checks) to show how much
# of each echo figure is the kernel's socket work that every server pays, and the same floor on
# io_uring (benches/peers/uring-floor: multishot accept and receive, direct descriptors, one
# io_uring_enter per pass) to show what changing the kernel interface alone would buy.
#
# Every server is pinned to core 0 (taskset -c 0), the load generator to core 1. The figure
# that matters is server CPU nanoseconds per message (from /proc/PID/stat): on a 2-core
# machine throughput depends on the load generator and on whatever else runs, CPU per message
# much less.
#
# Usage: benches/compare.sh [--quick] [--skip-build]
#   --quick       2 s windows instead of 5 s (smoke test of the script)
#   --skip-build  reuse the binaries already built
# Environment: DURATION (seconds per window), RESULTS (directory for the JSON lines).
# Needs: cargo, taskset, jq. Runs ~6 minutes after the builds.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
DURATION=${DURATION:-5}
BUILD=1
for arg in "$@"; do
    case $arg in
        --quick) DURATION=2 ;;
        --skip-build) BUILD=0 ;;
        *) echo "unknown argument: $arg" >&2; exit 2 ;;
    esac
done
RESULTS=${RESULTS:-$ROOT/target/compare/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$RESULTS"
SECRET=compare-secret-0123456789abcdef0123456789
CORES=$(nproc)
SERVER_CPU=0
CLIENT_CPU=$(( CORES > 1 ? 1 : 0 ))
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

command -v jq >/dev/null || { echo "compare.sh needs jq (apt-get install jq)" >&2; exit 2; }

if [ "$BUILD" = 1 ]; then
    echo "== building (release)"
    cargo build --release --bin customws --bin customws-bench
    (cd benches/peers/tokio-echo && cargo build --release)
    (cd benches/peers/tokio-gateway && cargo build --release)
    (cd benches/peers/mio-floor && cargo build --release)
    (cd benches/peers/uring-floor && cargo build --release)
fi
CUSTOMWS=$ROOT/target/release/customws
BENCH=$ROOT/target/release/customws-bench
TOKIO_ECHO=$ROOT/benches/peers/tokio-echo/target/release/tokio-echo
TOKIO_GATEWAY=$ROOT/benches/peers/tokio-gateway/target/release/tokio-gateway
MIO_FLOOR=$ROOT/benches/peers/mio-floor/target/release/mio-floor
URING_FLOOR=$ROOT/benches/peers/uring-floor/target/release/uring-floor

SERVER_PID=
cleanup() {
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; fi
}
trap cleanup EXIT

# A port below 32768 (outside the ephemeral range) that nothing listens on.
free_port() {
    local p
    while :; do
        p=$(( 20000 + RANDOM % 12000 ))
        if ! ss -Hltn "sport = :$p" | grep -q .; then echo "$p"; return; fi
    done
}

# start_server NAME: starts it pinned to the server core on $PORT, sets SERVER_PID.
start_server() {
    PORT=$(free_port)
    local addr=127.0.0.1:$PORT
    case $1 in
        customws-echo)
            taskset -c $SERVER_CPU "$CUSTOMWS" echo --listen "$addr" --shards 1 \
                --admin-listen off --log-level warn >"$RESULTS/$1.log" 2>&1 & ;;
        customws-gateway)
            # Rate limits off: the benchmark measures the message path, not the limiter.
            taskset -c $SERVER_CPU "$CUSTOMWS" serve --listen "$addr" --shards 1 \
                --jwt-secret "$SECRET" --admin-listen off --log-level warn \
                --rate-limit 1000000000 --rate-burst 1000000000 >"$RESULTS/$1.log" 2>&1 & ;;
        customws-gateway-nofanout)
            # The tokio peer has no presence: this is the like-for-like upgrade figure.
            taskset -c $SERVER_CPU "$CUSTOMWS" serve --listen "$addr" --shards 1 \
                --jwt-secret "$SECRET" --admin-listen off --log-level warn \
                --presence-fanout off >"$RESULTS/$1.log" 2>&1 & ;;
        mio-floor)
            taskset -c $SERVER_CPU "$MIO_FLOOR" "$addr" >"$RESULTS/$1.log" 2>&1 & ;;
        uring-floor)
            taskset -c $SERVER_CPU "$URING_FLOOR" "$addr" >"$RESULTS/$1.log" 2>&1 & ;;
        tokio-echo)
            taskset -c $SERVER_CPU "$TOKIO_ECHO" "$addr" >"$RESULTS/$1.log" 2>&1 & ;;
        tokio-gateway)
            taskset -c $SERVER_CPU "$TOKIO_GATEWAY" "$addr" "$SECRET" >"$RESULTS/$1.log" 2>&1 & ;;
    esac
    SERVER_PID=$!
    for _ in $(seq 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then return 0; fi
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then break; fi
        sleep 0.05
    done
    echo "$1 did not start; see $RESULTS/$1.log" >&2
    exit 1
}

stop_server() {
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
}

# run TEST SERVER BENCH-ARGS...: one measurement against a fresh server.
run() {
    local test=$1 server=$2
    shift 2
    echo "== $test against $server"
    start_server "$server"
    taskset -c $CLIENT_CPU "$BENCH" "$@" --addr "127.0.0.1:$PORT" --server-pid "$SERVER_PID" \
        --jwt-secret "$SECRET" --label "$server" --duration "$DURATION" \
        | tee "$RESULTS/$test.$server.txt" | sed 's/^/   /' | grep -v '^   {' || true
    tail -n 1 "$RESULTS/$test.$server.txt" | jq -c --arg test "$test" '. + {test: $test}' \
        >>"$RESULTS/results.jsonl" || echo "   (no JSON line)"
    stop_server
    sleep 0.5
}

echo "== results in $RESULTS (server on core $SERVER_CPU, load generator on core $CLIENT_CPU)"
ECHO_SERVERS="customws-echo tokio-echo mio-floor uring-floor"
# io_uring with DEFER_TASKRUN needs Linux 6.1 and io_uring not disabled by sysctl or seccomp.
if ! (start_server uring-floor && kill "$SERVER_PID") >/dev/null 2>&1; then
    echo "== uring-floor does not start here (see $RESULTS/uring-floor.log); left out"
    ECHO_SERVERS="customws-echo tokio-echo mio-floor"
fi
for s in $ECHO_SERVERS; do
    run echo-16 "$s" echo --connections 100 --size 32 --in-flight 16
    run echo-1 "$s" echo --connections 100 --size 32 --in-flight 1
    # The runtime alone: upgrades (the token is sent but not checked) and idle memory. The
    # floors' memory figure is not comparable (uring-floor's buffer ring is 16 MiB up front);
    # their CPU per upgrade is the point.
    run hold-19k "$s" hold --connections 19000 --hold-for 1
done
for s in customws-gateway tokio-gateway; do
    run p2p-1000 "$s" p2p --users 1000 --size 16 --in-flight 16 --drain 3
    # A window of 32 broadcasts lets each subscriber's output batch into fewer writes.
    run broadcast-1000 "$s" broadcast --publishers 1 --subscribers 1000 --size 16 \
        --in-flight 32 --drain 1
    # Authenticated upgrades and idle memory per authenticated connection; 19k because a
    # process here may open at most 20,000 files.
    run hold-19k-auth "$s" hold --connections 19000 --hold-for 1
done
run hold-19k-auth customws-gateway-nofanout hold --connections 19000 --hold-for 1

# Latency at half the saturating load: each server at half the rate it reached above.
half_rate() {
    jq -rs --arg t "$1" --arg l "$2" \
        'map(select(.test == $t and .label == $l)) | first | ((.msgs_per_s // 0) / 2 | floor)' \
        "$RESULTS/results.jsonl"
}
for s in customws-echo tokio-echo; do
    run echo-16-half "$s" echo --connections 100 --size 32 --in-flight 16 \
        --rate "$(half_rate echo-16 "$s")"
done
for s in customws-gateway tokio-gateway; do
    run p2p-1000-half "$s" p2p --users 1000 --size 16 --in-flight 16 --drain 3 \
        --rate "$(half_rate p2p-1000 "$s")"
done

echo
echo "== summary (server CPU per message: lower is better; ratio = customws / peer)"
jq -rs '
  def row(t; a; b; f):
    (map(select(.test == t and .label == a)) | first) as $x |
    (map(select(.test == t and .label == b)) | first) as $y |
    if $x and $y then
      [t, f, a, ($x[f] // 0), b, ($y[f] // 0),
       (if ($y[f] // 0) > 0 then (($x[f] // 0) / $y[f]) else null end)]
    else empty end;
  def fmt: if type == "number" then (if . >= 100 then (. | floor | tostring)
            else ((. * 1000 | round) / 1000 | tostring) end) else tostring end;
  (["test", "figure", "server", "value", "peer", "value", "ratio"] | @tsv),
  ([
    row("echo-16"; "customws-echo"; "tokio-echo"; "server_cpu_ns_per_msg"),
    row("echo-16"; "customws-echo"; "tokio-echo"; "server_user_ns_per_msg"),
    row("echo-16"; "customws-echo"; "tokio-echo"; "server_sys_ns_per_msg"),
    row("echo-16"; "customws-echo"; "tokio-echo"; "msgs_per_s"),
    row("echo-16"; "customws-echo"; "mio-floor"; "server_cpu_ns_per_msg"),
    row("echo-16"; "customws-echo"; "uring-floor"; "server_cpu_ns_per_msg"),
    row("echo-16"; "mio-floor"; "tokio-echo"; "server_cpu_ns_per_msg"),
    row("echo-16"; "uring-floor"; "tokio-echo"; "server_cpu_ns_per_msg"),
    row("echo-1"; "customws-echo"; "tokio-echo"; "server_cpu_ns_per_msg"),
    row("echo-1"; "customws-echo"; "tokio-echo"; "server_user_ns_per_msg"),
    row("echo-1"; "customws-echo"; "tokio-echo"; "server_sys_ns_per_msg"),
    row("echo-1"; "customws-echo"; "tokio-echo"; "msgs_per_s"),
    row("echo-1"; "customws-echo"; "mio-floor"; "server_cpu_ns_per_msg"),
    row("echo-1"; "customws-echo"; "uring-floor"; "server_cpu_ns_per_msg"),
    row("echo-1"; "mio-floor"; "tokio-echo"; "server_cpu_ns_per_msg"),
    row("echo-1"; "uring-floor"; "tokio-echo"; "server_cpu_ns_per_msg"),
    row("p2p-1000"; "customws-gateway"; "tokio-gateway"; "server_cpu_ns_per_msg"),
    row("p2p-1000"; "customws-gateway"; "tokio-gateway"; "server_user_ns_per_msg"),
    row("p2p-1000"; "customws-gateway"; "tokio-gateway"; "server_sys_ns_per_msg"),
    row("p2p-1000"; "customws-gateway"; "tokio-gateway"; "msgs_per_s"),
    row("broadcast-1000"; "customws-gateway"; "tokio-gateway"; "server_cpu_ns_per_msg"),
    row("broadcast-1000"; "customws-gateway"; "tokio-gateway"; "server_user_ns_per_msg"),
    row("broadcast-1000"; "customws-gateway"; "tokio-gateway"; "server_sys_ns_per_msg"),
    row("broadcast-1000"; "customws-gateway"; "tokio-gateway"; "msgs_per_s"),
    row("hold-19k"; "customws-echo"; "tokio-echo"; "handshakes_per_s"),
    row("hold-19k"; "customws-echo"; "tokio-echo"; "server_cpu_ns_per_handshake"),
    row("hold-19k"; "customws-echo"; "tokio-echo"; "server_rss_per_conn_bytes"),
    row("hold-19k"; "customws-echo"; "mio-floor"; "server_cpu_ns_per_handshake"),
    row("hold-19k"; "customws-echo"; "uring-floor"; "server_cpu_ns_per_handshake"),
    row("hold-19k-auth"; "customws-gateway"; "tokio-gateway"; "handshakes_per_s"),
    row("hold-19k-auth"; "customws-gateway"; "tokio-gateway"; "server_cpu_ns_per_handshake"),
    row("hold-19k-auth"; "customws-gateway"; "tokio-gateway"; "server_rss_per_conn_bytes"),
    row("hold-19k-auth"; "customws-gateway-nofanout"; "tokio-gateway"; "handshakes_per_s"),
    row("hold-19k-auth"; "customws-gateway-nofanout"; "tokio-gateway"; "server_cpu_ns_per_handshake"),
    row("hold-19k-auth"; "customws-gateway-nofanout"; "tokio-gateway"; "server_rss_per_conn_bytes"),
    row("echo-16-half"; "customws-echo"; "tokio-echo"; "msgs_per_s"),
    row("p2p-1000-half"; "customws-gateway"; "tokio-gateway"; "msgs_per_s")
  ][] | map(fmt) | @tsv)
' "$RESULTS/results.jsonl" | column -t -s $'\t'
echo
echo "latency p50 / p99 (µs; the *-half rows are at half of each server's saturating rate):"
jq -r '[.test, .label, (.latency.p50_us // .handshake_latency.p50_us // "-"),
        (.latency.p99_us // .handshake_latency.p99_us // "-")] | @tsv' \
    "$RESULTS/results.jsonl" | column -t -s $'\t'
