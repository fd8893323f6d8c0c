#!/usr/bin/env bash
# Runs every fuzz target in turn (one at a time, one job), each for at most
# SECONDS and RUNS executions: fuzz/run-all.sh SECONDS [RUNS [TARGET...]]
# (only the TARGETs named, in that order, when some are).
# Exits non-zero if any target finds a crash, a leak or an input that runs
# longer than 20 s (its input is in fuzz/artifacts/<target>/). Logs go to
# fuzz/artifacts/<target>.log.
set -uo pipefail
cd "$(dirname "$0")"
secs=${1:-20}
runs=${2:--1}
shift 2 2>/dev/null || shift $#
failed=()
if [ $# -gt 0 ]; then targets=$*; else targets=$(cargo +nightly fuzz list); fi
mkdir -p artifacts
for t in $targets; do
  case $t in
    http_* | ws_upgrade | proxy_request) dict=(-dict=dict/http.dict) ;;
    config) dict=(-dict=dict/config.dict) ;;
    *) dict=() ;;
  esac
  echo "== $t (${secs}s)"
  # -a: overflow checks and debug assertions on, as in the test build.
  if cargo +nightly fuzz run -a "$t" -- -max_total_time="$secs" -runs="$runs" \
    -timeout=20 -print_final_stats=1 "${dict[@]}" >"artifacts/$t.log" 2>&1; then
    grep -E '^Done|stat::number_of_executed_units|stat::average_exec_per_sec' "artifacts/$t.log" | tr '\n' ' '
    grep -E '^#[0-9]+.*(DONE|pulse|NEW|REDUCE)' "artifacts/$t.log" | tail -1
  else
    failed+=("$t")
    tail -40 "artifacts/$t.log"
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzzing: findings in: ${failed[*]}"
  exit 1
fi
