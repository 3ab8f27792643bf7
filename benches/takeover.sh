#!/usr/bin/env bash
# Cluster mode: how long a node taking over every partition of a dead node needs before it
# has every acknowledged event in its engine — resuming from the dead node's checkpoints in
# JetStream (CK > 0) or reading the partitions from the start of the stream (CK=0).
#
#   cargo build --release --bin trimtab --example loadgen
#   CK=5000 bash benches/takeover.sh      # checkpoints every 5 s (the default)
#   CK=0 bash benches/takeover.sh         # no checkpoints: the takeover reads everything
#
# Load: the load tool's HTTP mode against node n1 (8 clients x batches of 100 events,
# USERS users, DUR seconds); then n1 is killed (-9) once it has read everything and (CK > 0)
# its checkpoint rounds have nothing left to write, and n2 starts on an empty data dir.
set -euo pipefail
cd "$(dirname "$0")/.."
CK=${CK:-5000}; USERS=${USERS:-40000}; DUR=${DUR:-10}
. benches/cluster-common.sh
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 ~ "^"m"({|$)" {s+=$2} END {print s+0}'; }
reads() { curl -s "http://127.0.0.1:$1/readyz" | python3 -c 'import json,sys; print(json.dumps({p["partition"]: p["read"] for p in json.load(sys.stdin)["cluster"]["partitions"]}))'; }
P1=$((PORT + 1)); P2=$((PORT + 2))
start_node n1 $P1 "lease_ms = 6000
checkpoint_ms = $CK"; N1=${NODES[-1]}
sleep 3
target/release/examples/loadgen --mode http --url "http://127.0.0.1:$P1" --clients 8 --batch 100 \
  --users "$USERS" --duration "$DUR" --skip-baseline 2>&1 | grep -E "acked|events/s" | head -3
# n1 has read everything (its reads stop moving) and its checkpoints are written.
prev=""; while true; do now=$(reads $P1)$(metric $P1 trimtab_cluster_checkpoint_images_total); [ "$now" = "$prev" ] && break; prev=$now; sleep $(( CK > 0 ? (CK / 1000) * 2 + 1 : 2 )); done
TARGET=$(reads $P1)
grep -E "WARN|ERROR" "$W/n1.log" | sort | uniq -c | sort -rn | head -5 || true
echo "n1: $(metric $P1 trimtab_cluster_consumed_total) events read, $(metric $P1 trimtab_cluster_checkpoint_images_total) checkpoint images"
kill -9 "$N1"
sleep 6.2   # n1's leases expire (lease_ms)
T0=$(date +%s.%N)
start_node n2 $P2 "lease_ms = 6000
checkpoint_ms = $CK"
while true; do
  if python3 -c "import sys; sys.exit(0 if $(date +%s.%N) - $T0 > 300 else 1)"; then
    echo "n2 did not catch up within 300 s"; grep -E "WARN|ERROR" "$W/n2.log" | tail -5; exit 1
  fi
  python3 - "$TARGET" "$(reads $P2)" <<'PY' && break
import json, sys
t, r = json.loads(sys.argv[1]), json.loads(sys.argv[2])
sys.exit(0 if len(r) == len(t) and all(r.get(k, 0) >= v for k, v in t.items()) else 1)
PY
  sleep 0.05
done
T1=$(date +%s.%N)
echo "CK=$CK: n2 had every partition in its engine $(python3 -c "print(round($T1 - $T0, 2))") s after its start; restored users: $(metric $P2 trimtab_cluster_restored_users_total), events read from the stream: $(metric $P2 trimtab_cluster_consumed_total)"
