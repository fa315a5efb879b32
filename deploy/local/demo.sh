#!/usr/bin/env bash
# The local run: three processors and a coordinator-mock on the local
# Postgres. The processors announce their identity keys, the coordinator runs
# a 2-of-3 FROST key generation (every round through the exactly-once links)
# and confirms the group key and Monero address; settlement blocks then flow
# every 2 seconds. Logs are interleaved here; Ctrl-C stops everything.
#
#   bash deploy/local/demo.sh                   # runs until Ctrl-C
#   DEMO_SECONDS=20 bash deploy/local/demo.sh   # stops by itself
set -euo pipefail
cd "$(dirname "$0")/../.."

PG_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
PG_BASE="${PG_URL%/*}"
PROCESSOR_PORT="${PROCESSOR_PORT:-50051}"   # processors use this port and the next two
COORDINATOR_PORT="${COORDINATOR_PORT:-50060}"
N=3

say() { printf '\033[1m[demo]\033[0m %s\n' "$*"; }
fail() { printf '\033[1;31m[demo] %s\033[0m\n' "$*" >&2; exit 1; }

command -v cargo >/dev/null || fail "cargo is missing: install Rust (rustup) first"
command -v psql >/dev/null || fail "psql is missing: apt-get install postgresql-client"
if ! pg_isready -d "$PG_URL" -q 2>/dev/null; then
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    say "starting Postgres"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n 1)" main start
    sleep 2
  fi
  pg_isready -d "$PG_URL" -q || fail "Postgres is not reachable at $PG_URL (set DATABASE_URL)"
fi

say "building (first time: a few minutes)"
cargo build --quiet --bin processor --bin coordinator-mock
BIN="${CARGO_TARGET_DIR:-target}/debug"

work=$(mktemp -d)
say "fresh databases demo_processor_{1..$N} and demo_coordinator; files in $work"
for db in $(seq -f "demo_processor_%g" 1 $N) demo_coordinator; do
  psql -q -d "$PG_URL" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db" >/dev/null
done

processors=""
for i in $(seq 1 $N); do
  port=$((PROCESSOR_PORT + i - 1))
  "$BIN/processor" generate-kek --out "$work/kek-$i.hex" >/dev/null
  cat > "$work/processor-$i.toml" <<TOML
node_id = "validator-$i"
listen = "127.0.0.1:$port"
database_url = "$PG_BASE/demo_processor_$i"
[keystore]
kek_file = "$work/kek-$i.hex"
[link]
heartbeat_interval = "1s"
peer_timeout = "5s"
[log]
filter = "info"
TOML
  processors+=$'[[processors]]\n'"name = \"validator-$i\""$'\n'"endpoint = \"http://127.0.0.1:$port\""$'\n'
done
cat > "$work/coordinator.toml" <<TOML
listen = "127.0.0.1:$COORDINATOR_PORT"
database_url = "$PG_BASE/demo_coordinator"
$processors
[keygen]
auto_start_threshold = 2
[settlement]
block_interval = "2s"
[log]
filter = "info"
TOML

pids=()
cleanup() {
  trap - INT TERM EXIT
  say "stopping"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  say "keys and links afterwards:"
  for i in $(seq 1 $N); do
    psql -d "$PG_BASE/demo_processor_$i" -Atc \
      "SELECT 'validator-$i: key ' || session || ' ' || status || ' ' || COALESCE(monero_address, '') FROM keys" 2>/dev/null || true
  done
  psql -d "$PG_BASE/demo_coordinator" -c \
    "SELECT link_id AS processor, last_handled_in, last_enqueued_out, acked_out FROM link_state ORDER BY link_id" \
    2>/dev/null || true
  rm -rf "$work"
}
trap cleanup INT TERM EXIT

export NO_COLOR=1
# Process substitution keeps $! the binary's own pid, so the signals below
# reach it (not a pipeline's last stage).
for i in $(seq 1 $N); do
  "$BIN/processor" run --config "$work/processor-$i.toml" > >(sed -u "s/^/validator-$i | /") 2>&1 &
  pids+=($!)
done
sleep 1
"$BIN/coordinator-mock" run --config "$work/coordinator.toml" > >(sed -u 's/^/coordinator | /') 2>&1 &
pids+=($!)

say "processors on 127.0.0.1:$PROCESSOR_PORT..$((PROCESSOR_PORT + N - 1)), coordinator admin on 127.0.0.1:$COORDINATOR_PORT"
say "try: grpcurl -plaintext 127.0.0.1:$PROCESSOR_PORT processor.v1.ProcessorAdmin/ListKeys"
if [ -n "${DEMO_SECONDS:-}" ]; then
  sleep "$DEMO_SECONDS"
else
  say "Ctrl-C to stop"
  wait "${pids[@]}"
fi
