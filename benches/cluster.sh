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
. benches/cluster-common.sh
cat > "$W/scripts/bench.rhai" <<'R'
const ON = ["custom"];
if event.type == "custom" && event.props.name == "bench" {
    adjust("bench", "v" + event.props.seq, #{ seq: event.props.seq });
}
R
URLS=()
for i in $(seq 1 "$N"); do
  start_node "n$i" $((PORT + i))
  URLS+=("http://127.0.0.1:$((PORT + i))")
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
ps -o comm=,time= -p "$(IFS=,; echo "$NATS_PID,${NODES[*]}")"
