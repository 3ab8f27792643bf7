# Sourced by benches/cluster.sh and benches/takeover.sh: a work dir, one nats-server with
# JetStream on a random port, the shared secrets, and `start_node NAME PORT [EXTRA]`, which
# writes the node's config (cluster section, limits off for load) and starts a release build
# of trimtab, waiting for its readyz. On exit the nodes stop first (SIGTERM, so each gives its
# leases back), then the NATS server; the work dir is removed unless KEEP is set.
W=$(mktemp -d /tmp/trimtab-cluster-bench.XXXXXX)
NODES=()
NATS_PID=
cleanup() {
  for p in "${NODES[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${NODES[@]}"; do wait "$p" 2>/dev/null || true; done
  [ -z "$NATS_PID" ] || { kill "$NATS_PID" 2>/dev/null || true; wait "$NATS_PID" 2>/dev/null || true; }
  [ -n "${KEEP:-}" ] || rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
PORT=$((20000 + RANDOM % 20000))
nats-server -js -a 127.0.0.1 -p $PORT -sd "$W/js" > "$W/nats.log" 2>&1 & NATS_PID=$!
mkdir -p "$W/scripts"; cp scripts/*.rhai "$W/scripts/"
export TRIMTAB_WRITE_KEY=wk-0123456789abcdef0123 TRIMTAB_ADMIN_TOKEN=adm-0123456789abcdef0123
export TRIMTAB_TOKEN_KEY=$(openssl rand -hex 32) TRIMTAB_PSEUDONYM_KEY=$(openssl rand -hex 32)

# start_node NAME PORT [EXTRA]: EXTRA is more lines of the [cluster] section.
start_node() {
  cat > "$W/$1.toml" <<C
[cluster]
nats = "nats://127.0.0.1:$PORT"
node = "$1"
partitions = 64
${3:-}
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
  target/release/trimtab serve --addr "127.0.0.1:$2" --data "$W/d$1" --scripts "$W/scripts" \
    --config "$W/$1.toml" > "$W/$1.log" 2>&1 &
  NODES+=($!)
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$2/readyz" >/dev/null && break; sleep 0.1; done
}
