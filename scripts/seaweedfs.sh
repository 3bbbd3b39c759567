#!/usr/bin/env bash
# A real S3-compatible object store for development, tests and CI: SeaweedFS's `weed server` (master, volume, filer
# and S3 gateway in one process) on loopback, with one S3 identity, so requests with other keys are refused.
#   scripts/seaweedfs.sh start|stop|status|reset
# The binary is built from the Go module proxy by `make seaweedfs` (part of `make setup`) into ~/.cache/auditoryhum.
# Env: SEAWEEDFS_PORT (18333: S3; the server's other ports are the next seven: S3 gRPC, master, master gRPC, volume,
#      volume gRPC, filer, filer gRPC), SEAWEEDFS_HOME_DIR (<repo>/.seaweedfs: data, logs, pid, credentials),
#      SEAWEEDFS_ACCESS_KEY / SEAWEEDFS_SECRET_KEY (default: random ones made on the first start and kept),
#      SEAWEEDFS_START_TIMEOUT (60 s), WEED (the binary; default the cached build of deploy/seaweedfs/go.mod's version).
# On start, $SEAWEEDFS_HOME_DIR/credentials.env holds the client settings (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
# AWS_SECRET_ACCESS_KEY, AWS_REGION): `set -a; . .seaweedfs/credentials.env; set +a` before `auditoryhum ingest`.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/pidfile.sh
. "$ROOT/scripts/pidfile.sh"
VERSION=$(awk '$1 == "github.com/seaweedfs/seaweedfs" {print $2}' "$ROOT/deploy/seaweedfs/go.mod")
WEED=${WEED:-$HOME/.cache/auditoryhum/weed-$VERSION}
PORT=${SEAWEEDFS_PORT:-18333}
HOME_DIR=${SEAWEEDFS_HOME_DIR:-$ROOT/.seaweedfs}
TIMEOUT=${SEAWEEDFS_START_TIMEOUT:-60}

mkdir -p "$HOME_DIR"
HOME_DIR=$(cd "$HOME_DIR" && pwd)
PIDFILE=$HOME_DIR/weed.pid
CONSOLE=$HOME_DIR/logs/console.log

pid_alive() {  # the pid file names a live weed (not a recycled pid)
  [ -f "$PIDFILE" ] || return 1
  local pid; pid=$(cat "$PIDFILE")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && grep -qa "$WEED" "/proc/$pid/cmdline" 2>/dev/null
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Ready once the S3 gateway answers and a volume server has joined the master (before that, a write fails).
probe() {
  curl -s -o /dev/null "http://127.0.0.1:$PORT/" &&
    curl -s "http://127.0.0.1:$((PORT + 2))/dir/status" | grep -q '"DataNodes"'
}

fail() {
  echo "seaweedfs: $*" >&2
  [ -s "$CONSOLE" ] && { echo "--- $CONSOLE" >&2; tail -n 30 "$CONSOLE" >&2; }
  exit 1
}

random_key() { head -c "$1" /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c "$2"; }

# The one identity the gateway accepts (weed's -s3.config): kept across starts, so clients keep their keys.
write_credentials() {
  local access=${SEAWEEDFS_ACCESS_KEY:-} secret=${SEAWEEDFS_SECRET_KEY:-}
  if [ -z "$access" ] && [ -f "$HOME_DIR/credentials.env" ]; then
    access=$(sed -n 's/^AWS_ACCESS_KEY_ID=//p' "$HOME_DIR/credentials.env")
    secret=$(sed -n 's/^AWS_SECRET_ACCESS_KEY=//p' "$HOME_DIR/credentials.env")
  fi
  [ -n "$access" ] || access=AH$(random_key 32 18)
  [ -n "$secret" ] || secret=$(random_key 64 40)
  (
    umask 077
    cat >"$HOME_DIR/s3.json" <<EOF
{"identities": [{"name": "auditoryhum", "credentials": [{"accessKey": "$access", "secretKey": "$secret"}],
  "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
EOF
    cat >"$HOME_DIR/credentials.env" <<EOF
AWS_ENDPOINT_URL=http://127.0.0.1:$PORT
AWS_ACCESS_KEY_ID=$access
AWS_SECRET_ACCESS_KEY=$secret
AWS_REGION=us-east-1
EOF
  )
}

start() {
  if pid_alive; then echo "seaweedfs: already running (pid $(cat "$PIDFILE"), S3 on 127.0.0.1:$PORT)"; return 0; fi
  rm -f "$PIDFILE"
  [ -x "$WEED" ] || fail "no weed binary at $WEED: run 'make seaweedfs' (part of make setup)"
  for p in $(seq "$PORT" $((PORT + 7))); do port_open "$p" && fail "port $p on 127.0.0.1 is already in use"; done
  mkdir -p "$HOME_DIR/data" "$HOME_DIR/logs"
  write_credentials
  local t0=$SECONDS
  # Loopback only; no telemetry (it would phone home); volumes of 64 MB rather than 30 GB; the volume server stops
  # at once on TERM (its default waits 10 s for a load balancer to notice); the lone master elects itself in 1 s
  # on a restart, not 10. weed would add the caller's AWS_* keys as a second admin identity: they are unset.
  # setsid: its own session, so a Ctrl-C in the calling terminal or make does not reach the server.
  env -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY -u AWS_SESSION_TOKEN setsid nohup "$WEED" \
    -logdir="$HOME_DIR/logs" -alsologtostderr=false server -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -dir="$HOME_DIR/data" -master.telemetry=false -master.volumeSizeLimitMB=64 -volume.max=0 \
    -master.electionTimeout=1s -volume.preStopSeconds=0 -s3 -s3.config="$HOME_DIR/s3.json" -s3.port="$PORT" -s3.port.grpc=$((PORT + 1)) \
    -s3.port.iceberg=0 -s3.port.lance=0 -master.port=$((PORT + 2)) -master.port.grpc=$((PORT + 3)) \
    -volume.port=$((PORT + 4)) -volume.port.grpc=$((PORT + 5)) -filer.port=$((PORT + 6)) \
    -filer.port.grpc=$((PORT + 7)) >"$CONSOLE" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$PIDFILE"
  while :; do
    kill -0 "$pid" 2>/dev/null || { rm -f "$PIDFILE"; fail "weed exited during start-up"; }
    probe && break
    [ $((SECONDS - t0)) -ge "$TIMEOUT" ] && { stop >/dev/null; fail "not ready after ${TIMEOUT}s"; }
    sleep 0.2
  done
  echo "seaweedfs: S3 on http://127.0.0.1:$PORT (pid $pid, $((SECONDS - t0))s, credentials $HOME_DIR/credentials.env)"
}

stop() {
  if ! pid_alive; then rm -f "$PIDFILE"; echo "seaweedfs: not running"; return 0; fi
  stop_by_pidfile seaweedfs "$PIDFILE" 20
}

status() {
  if pid_alive; then echo "seaweedfs: running (pid $(cat "$PIDFILE"), S3 on 127.0.0.1:$PORT, home $HOME_DIR)"
  else echo "seaweedfs: not running"; return 3; fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  reset) stop; rm -rf "$HOME_DIR/data" "$HOME_DIR/logs"; echo "seaweedfs: data wiped" ;;
  *) echo "usage: $0 {start|stop|status|reset}" >&2; exit 2 ;;
esac
