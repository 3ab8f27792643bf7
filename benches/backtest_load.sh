#!/usr/bin/env bash
# The backtest's effect on live WebSocket latency: one server, alternating idle and backtest runs.
set -uo pipefail
cd /work/main
W=/tmp/btl; rm -rf $W/data $W/scripts; mkdir -p $W/scripts
cp scripts/*.rhai $W/scripts/
cat > $W/scripts/bench.rhai <<'R'
const ON = ["custom"];
if event.type == "custom" && event.props.name == "bench" {
    adjust("bench", "v" + event.props.seq, #{ seq: event.props.seq });
}
R
printf '[delivery]\ncap_per_session = 0\ncap_per_user = 0\n[http]\nmax_connections_per_ip = 0\n[rate]\nanonymous_per_min = 0\nidentify_per_min = 0\nuser_per_min = 0\n' > $W/cfg.toml
export TRIMTAB_WRITE_KEY=wk-0123456789abcdef0123 TRIMTAB_ADMIN_TOKEN=adm-0123456789abcdef0123
target/release/trimtab serve --addr 127.0.0.1:18765 --data $W/data --scripts $W/scripts --config $W/cfg.toml > $W/server.log 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
sleep 2
URL=http://127.0.0.1:18765
AUTH="Authorization: Bearer $TRIMTAB_ADMIN_TOKEN"
target/release/examples/loadgen --mode http --url $URL --clients 4 --batch 100 --users 20000 --duration 4 --skip-baseline > $W/seed.txt 2>&1 || true
ws() { target/release/examples/loadgen --url $URL --sessions 1000 --rate 10000 --duration 6 --warmup 1 --skip-baseline --json 2>/dev/null | python3 -c '
import json,sys; d=json.loads(sys.stdin.read()); t=d["target"]
print("ack p50 %.2f p99 %.2f ms, adjust p99 %.2f ms, events %d" % (t["ack"]["p50_ms"], t["ack"]["p99_ms"], t["adjust"]["p99_ms"], t["ack"]["count"]))'; }
SRC=$(python3 -c 'import json;print(json.dumps(open("scripts/cta_by_context.rhai").read()))')
for round in 1 2 3; do
  echo "idle $round: $(ws)"
  R=$(curl -s -X POST -H "$AUTH" -d "{\"source\": $SRC, \"max_events\": 5000000}" $URL/v1/rules/backtest)
  ID=$(echo "$R" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  echo "backtest $ID started: $(echo "$R" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["state"], d["progress"])')"
  echo "under backtest $round: $(ws)"
  curl -s -H "$AUTH" $URL/v1/rules/backtest/$ID | python3 -c 'import json,sys; d=json.load(sys.stdin); print("backtest at the end of the load:", d["state"], d["progress"], (d.get("result") or {}).get("elapsed_ms"))'
  curl -s -X DELETE -H "$AUTH" $URL/v1/rules/backtest/$ID > /dev/null
done
grep -i "ev/s\|events" $W/seed.txt | head -5
uptime
