#!/usr/bin/env bash
# Builds every cargo-fuzz target and runs each one for N seconds (default 30) over the
# committed seeds (fuzz/seeds/<target>) plus the local corpus (fuzz/corpus/<target>, not
# committed). Fails on any crash, panic, leak, timeout or out-of-memory. Installs cargo-fuzz
# when missing. Usage: fuzz/smoke.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-${FUZZ_SECONDS:-30}}"
shift || true
start=$(date +%s)

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz/smoke.sh: the nightly toolchain is required (rustup toolchain install nightly)" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --quiet
fi

# Debug assertions and overflow checks on (cargo-fuzz's default), AddressSanitizer on.
nice -n 19 cargo +nightly fuzz build

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
dict_for() {
  case "$1" in
    frame_decoder) echo dicts/ws.dict ;;
    handshake) echo dicts/http.dict ;;
    envelope | token) echo dicts/json.dict ;;
    routing) echo dicts/routing.dict ;;
    cluster_wire) echo dicts/cluster.dict ;;
    *) cat dicts/http.dict dicts/ws.dict dicts/json.dict >target/all.dict && echo target/all.dict ;;
  esac
}

failed=()
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t" "seeds/$t"
  log="target/smoke-$t.log"
  if nice -n 19 cargo +nightly fuzz run "$t" "corpus/$t" "seeds/$t" -- \
    -dict="$(dict_for "$t")" -max_total_time="$secs" -max_len=8192 -timeout=20 \
    -rss_limit_mb=4096 -print_final_stats=1 >"$log" 2>&1; then
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
    echo "fuzz $t: ok, $runs executions in ${secs}s"
  else
    echo "fuzz $t: FAILED (log: fuzz/$log; input under fuzz/artifacts/$t/)"
    grep -E -A12 "panicked at|ERROR: (AddressSanitizer|libFuzzer)" "$log" | head -40 || tail -40 "$log"
    failed+=("$t")
  fi
done
echo "fuzz smoke: ${#targets[@]} targets, ${#failed[@]} failed, $(( $(date +%s) - start ))s"
[ ${#failed[@]} -eq 0 ]
