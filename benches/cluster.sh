#!/usr/bin/env bash
# Cluster mode on one machine: N trimtab nodes (release build) and one nats-server with
# JetStream, driven by the load tool with its clients (HTTP) or sessions (WebSocket) spread
# over the nodes. A scaling check of the cluster path, not a capacity claim: every node, the
# NATS server and the load tool share this machine's cores.
#
#   cargo build --release --bin trimtab --example loadgen
#   bash benches/cluster.sh 3 http     # 8 clients x batches of 100, 40 000 users
#   bash benches/cluster.sh 3 ws       # 1 000 sessions at 10 000 events/s
#   bash benches/cluster.sh 1 http     # the same path with one node (cluster mode still on)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-3}; MODE=${2:-http}; DUR=${DUR:-10}
W=$(mktemp -d /tmp/trimtab-cluster-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
PORT=$((20000 + RANDOM % 20000))
nats-server -js -a 127.0.0.1 -p $PORT -sd "$W/js" > "$W/nats.log" 2>&1 & PIDS+=($!)
mkdir -p "$W/scripts"; cp scripts/*.rhai "$W/scripts/"
cat > "$W/scripts/bench.rhai" <<'R'
const ON = ["custom"];
if event.type == "custom" && event.props.name == "bench" {
    adjust("bench", "v" + event.props.seq, #{ seq: event.props.seq });
}
R
export TRIMTAB_WRITE_KEY=wk-0123456789abcdef0123 TRIMTAB_ADMIN_TOKEN=adm-0123456789abcdef0123
export TRIMTAB_TOKEN_KEY=$(openssl rand -hex 32) TRIMTAB_PSEUDONYM_KEY=$(openssl rand -hex 32)
URLS=()
for i in $(seq 1 "$N"); do
  P=$((PORT + i))
  cat > "$W/n$i.toml" <<C
[cluster]
nats = "nats://127.0.0.1:$PORT"
node = "n$i"
partitions = 64
[delivery]
cap_per_session = 0
cap_per_user = 0
[http]
max_connections_per_ip = 0
[rate]
anonymous_per_min = 0
identify_per_min = 0
user_per_min = 0
C
  target/release/trimtab serve --addr 127.0.0.1:$P --data "$W/d$i" --scripts "$W/scripts" \
    --config "$W/n$i.toml" > "$W/n$i.log" 2>&1 & PIDS+=($!)
  URLS+=("http://127.0.0.1:$P")
done
for u in "${URLS[@]}"; do
  for _ in $(seq 1 100); do curl -sf "$u/readyz" >/dev/null && break; sleep 0.2; done
done
sleep 3   # the partitions settle over the nodes
LIST=$(IFS=,; echo "${URLS[*]}")
if [ "$MODE" = http ]; then
  target/release/examples/loadgen --mode http --url "$LIST" --clients 8 --batch 100 --users 40000 --duration "$DUR" --skip-baseline 2>&1 | grep -v "^warning"
else
  target/release/examples/loadgen --url "$LIST" --sessions 1000 --rate 10000 --duration "$DUR" --skip-baseline 2>&1 | grep -v "^warning"
fi
for u in "${URLS[@]}"; do
  echo "$u: $(curl -s "$u/readyz" | python3 -c 'import json,sys; c=json.load(sys.stdin)["cluster"]; print(c["node"], len(c["partitions"]), "partitions")')"
done
echo "CPU time over the whole run (nats-server, then the nodes):"
ps -o comm=,time= -p "$(IFS=,; echo "${PIDS[*]}")"
