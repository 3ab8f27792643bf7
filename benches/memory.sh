#!/usr/bin/env bash
# Resident memory per cached user: the slope of the server's RssAnon between two user counts,
# right after an HTTP load and at rest (after `pipeline.compact_idle_ms` has made the idle
# users compact). The procedure of BENCHMARKS.md's memory figures, as one command.
#
#   cargo build --release --bin trimtab --example loadgen
#   bash benches/memory.sh                        # 10 000 and 40 000 users, 3 runs of each
#   SIZES="10000 80000" RUNS=2 bash benches/memory.sh
#   BIN=/tmp/other-trimtab bash benches/memory.sh # another build of the server
#   ENV="MIMALLOC_ALLOW_THP=1" bash benches/memory.sh   # extra environment for the server
#
# Each run: a fresh data dir, the shipped example rules, frequency caps off, the store's page
# cache at 16 MiB (so the slope is the users', not the page cache's); the load tool's HTTP
# mode (8 clients x batches of 100 events, every user in every 100 events, DUR seconds); then
# RssAnon right after the load and REST seconds later. Sizes alternate within a run, so a
# machine that slows down during the runs affects both ends of each slope alike.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/trimtab}
LOADGEN=${LOADGEN:-target/release/examples/loadgen}
SIZES=${SIZES:-"10000 40000"}
RUNS=${RUNS:-3}
DUR=${DUR:-6}
REST=${REST:-30}
ENV=${ENV:-}
for f in "$BIN" "$LOADGEN"; do
  [ -x "$f" ] || { echo "$f not found: cargo build --release --bin trimtab --example loadgen" >&2; exit 2; }
done
read -r -a sizes <<<"$SIZES"
[ "${#sizes[@]}" -ge 2 ] || { echo "SIZES needs two user counts or more" >&2; exit 2; }
W=$(mktemp -d)
PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
rss() { awk '/^RssAnon:/ {print $2}' "/proc/$1/status"; }

# One server, one load of $1 users: sets AFTER and RESTING (RssAnon, KiB).
measure() {
  local users=$1 dir="$W/run" key url=""
  rm -rf "$dir"; mkdir -p "$dir/data" "$dir/scripts"
  cp scripts/scroll_offer.rhai scripts/hover_review.rhai scripts/cta_by_context.rhai "$dir/scripts/"
  printf '[delivery]\ncap_per_session = 0\ncap_per_user = 0\n' >"$dir/trimtab.toml"
  key=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
  # shellcheck disable=SC2086 # ENV is a list of NAME=VALUE words
  env $ENV TRIMTAB_WRITE_KEY="$key" TRIMTAB_ADMIN_TOKEN="a$key" TRIMTAB_PIPELINE__STORE_CACHE_MB=16 \
    TRIMTAB_RATE__IDENTIFY_PER_MIN=0 \
    "$BIN" serve --addr 127.0.0.1:0 --data "$dir/data" --scripts "$dir/scripts" \
    --config "$dir/trimtab.toml" >"$dir/out.log" 2>"$dir/err.log" &
  PID=$!
  for _ in $(seq 300); do
    url=$(sed -n 's/.*trimtab listening on \(http[^ ]*\).*/\1/p' "$dir/out.log" | head -1)
    [ -n "$url" ] && break
    sleep 0.1
  done
  [ -n "$url" ] || { echo "the server did not start:" >&2; cat "$dir/err.log" >&2; exit 1; }
  "$LOADGEN" --mode http --clients 8 --batch 100 --users "$users" --duration "$DUR" \
    --skip-baseline --url "${url%/}" --write-key "$key" >"$dir/load.log" 2>&1 \
    || { echo "the load failed:" >&2; tail -5 "$dir/load.log" >&2; exit 1; }
  AFTER=$(rss "$PID"); sleep "$REST"; RESTING=$(rss "$PID")
  kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
}

echo "memory per cached user: $BIN, sizes $SIZES, $RUNS runs, load ${DUR}s, rest ${REST}s${ENV:+, env $ENV}"
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-5s %-8s %16s %16s\n' run users "after load KiB" "at rest KiB"
lo=${sizes[0]}; hi=${sizes[-1]}
slopes=()
for r in $(seq "$RUNS"); do
  declare -A a=() s=()
  for u in "${sizes[@]}"; do
    measure "$u"
    a[$u]=$AFTER; s[$u]=$RESTING
    printf '%-5s %-8s %16s %16s\n' "$r" "$u" "${a[$u]}" "${s[$u]}"
  done
  slopes+=("$(awk -v a1="${a[$lo]}" -v a2="${a[$hi]}" -v s1="${s[$lo]}" -v s2="${s[$hi]}" -v n="$((hi - lo))" \
    'BEGIN {printf "%.2f %.2f", (a2 - a1) / n, (s2 - s1) / n}')")
  unset a s
done
echo "KiB per cached user (slope $lo -> $hi users), after load / at rest:"
for i in "${!slopes[@]}"; do echo "  run $((i + 1)): ${slopes[$i]/ / \/ }"; done
printf '%s\n' "${slopes[@]}" | awk '{a += $1; s += $2} END {printf "  mean:  %.2f / %.2f\n", a / NR, s / NR}'
echo "(load average now $(cut -d' ' -f1-3 /proc/loadavg))"
