#!/usr/bin/env bash
# The local run: one processor and one coordinator-mock on the local Postgres,
# exchanging heartbeats and settlement blocks over the exactly-once link.
# Their logs are interleaved here; Ctrl-C stops both.
#
#   bash deploy/local/demo.sh              # runs until Ctrl-C
#   DEMO_SECONDS=20 bash deploy/local/demo.sh   # stops by itself
set -euo pipefail
cd "$(dirname "$0")/../.."

PG_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
PG_BASE="${PG_URL%/*}"
PROCESSOR_PORT="${PROCESSOR_PORT:-50051}"
COORDINATOR_PORT="${COORDINATOR_PORT:-50060}"

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
say "fresh databases demo_processor_1 and demo_coordinator; files in $work"
for db in demo_processor_1 demo_coordinator; do
  psql -q -d "$PG_URL" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db" >/dev/null
done

"$BIN/processor" generate-kek --out "$work/kek.hex" >/dev/null
cat > "$work/processor.toml" <<TOML
node_id = "validator-1"
listen = "127.0.0.1:$PROCESSOR_PORT"
database_url = "$PG_BASE/demo_processor_1"
[keystore]
kek_file = "$work/kek.hex"
[link]
heartbeat_interval = "1s"
peer_timeout = "5s"
[log]
filter = "info,processor::link=debug"
TOML
cat > "$work/coordinator.toml" <<TOML
listen = "127.0.0.1:$COORDINATOR_PORT"
database_url = "$PG_BASE/demo_coordinator"
[[processors]]
name = "validator-1"
endpoint = "http://127.0.0.1:$PROCESSOR_PORT"
[settlement]
block_interval = "2s"
[log]
filter = "info,processor::link=debug"
TOML

pids=()
cleanup() {
  trap - INT TERM EXIT
  say "stopping"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  say "link state afterwards:"
  psql -d "$PG_BASE/demo_processor_1" -c \
    "SELECT 'processor' AS side, last_handled_in, last_enqueued_out, acked_out, (SELECT count(*) FROM settlement_blocks) AS blocks_taken_in FROM link_state" \
    2>/dev/null || true
  psql -d "$PG_BASE/demo_coordinator" -c \
    "SELECT 'coordinator' AS side, link_id, last_handled_in, last_enqueued_out, acked_out, (SELECT count(*) FROM settlement_acks) AS blocks_acked FROM link_state" \
    2>/dev/null || true
  rm -rf "$work"
}
trap cleanup INT TERM EXIT

export NO_COLOR=1
# Process substitution keeps $! the binary's own pid, so the signals below
# reach it (not a pipeline's last stage).
"$BIN/processor" run --config "$work/processor.toml" > >(sed -u 's/^/processor   | /') 2>&1 &
pids+=($!)
sleep 1
"$BIN/coordinator-mock" run --config "$work/coordinator.toml" > >(sed -u 's/^/coordinator | /') 2>&1 &
pids+=($!)

say "processor gRPC on 127.0.0.1:$PROCESSOR_PORT, coordinator admin on 127.0.0.1:$COORDINATOR_PORT"
say "try: grpcurl -plaintext 127.0.0.1:$PROCESSOR_PORT processor.v1.ProcessorAdmin/GetStatus"
if [ -n "${DEMO_SECONDS:-}" ]; then
  sleep "$DEMO_SECONDS"
else
  say "Ctrl-C to stop"
  wait "${pids[@]}"
fi
