#!/usr/bin/env bash
# P2P latency against offered load: one fresh server per rate, the paced load generator
# (`customws-bench p2p --rate R`) on the other core. Finds where the paced load saturates
# the server (achieved < offered, or the server's core at ~100 %) and what p50/p99 are
# below it. "Half the saturating load" is half of THIS rate: a paced load batches less than
# the as-fast-as-possible run of compare.sh, so each delivery costs the server more.
#
# Usage: benches/latency-sweep.sh [customws|tokio] [RATE...]
#   default rates: 25000 50000 75000 100000 150000 200000
# Environment: DURATION (seconds per window, default 5), FANOUT (customws, default off).
# Needs the release binaries (cargo build --release; tokio: benches/peers/tokio-gateway).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
SERVER=${1:-customws}
shift || true
RATES=${*:-25000 50000 75000 100000 150000 200000}
DURATION=${DURATION:-5}
FANOUT=${FANOUT:-off}
SECRET=sweep-secret-0123456789abcdef0123456789
BENCH=$ROOT/target/release/customws-bench
command -v jq >/dev/null || { echo "needs jq" >&2; exit 2; }

printf '%-9s %9s %9s %7s %9s %9s %9s\n' server offered achieved util ns/deliv p50_us p99_us
for rate in $RATES; do
    port=$(( 20000 + RANDOM % 12000 ))
    case $SERVER in
        customws)
            taskset -c 0 "$ROOT/target/release/customws" serve --listen "127.0.0.1:$port" \
                --shards 1 --jwt-secret "$SECRET" --admin-listen off --log-level warn \
                --rate-limit 1000000000 --rate-burst 1000000000 \
                --presence-fanout "$FANOUT" >/dev/null 2>&1 & ;;
        tokio)
            taskset -c 0 "$ROOT/benches/peers/tokio-gateway/target/release/tokio-gateway" \
                "127.0.0.1:$port" "$SECRET" >/dev/null 2>&1 & ;;
        *) echo "unknown server $SERVER" >&2; exit 2 ;;
    esac
    pid=$!
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
        sleep 0.05
    done
    line=$(taskset -c 1 "$BENCH" p2p --addr "127.0.0.1:$port" --users 1000 --size 16 \
        --in-flight 16 --drain 3 --rate "$rate" --duration "$DURATION" \
        --jwt-secret "$SECRET" --server-pid "$pid" | tail -n 1)
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    echo "$line" | jq -r --arg s "$SERVER" --arg r "$rate" \
        '[$s, $r, (.msgs_per_s|floor), ((.server_cpu_util*100|floor|tostring)+"%"),
          (.server_cpu_ns_per_msg|floor), .latency.p50_us, .latency.p99_us] | @tsv' |
        awk -F'\t' '{printf "%-9s %9s %9s %7s %9s %9.0f %9.0f\n", $1,$2,$3,$4,$5,$6,$7}'
    sleep 0.5
done
