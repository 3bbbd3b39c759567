#!/usr/bin/env bash
# A real Apache Kafka 4.x node (KRaft, broker+controller in one JVM) for development, tests and CI: by default a
# single-node cluster; with the cluster variables below, one node of several (start each with its own env).
#   scripts/kafka.sh start|stop|status|reset
# Jars come from Maven Central into deploy/kafka/lib (make deploy/kafka/lib/.installed, or make kafka-up).
# Env: KAFKA_PORT (19092), KAFKA_CONTROLLER_PORT (19093), KAFKA_HOME_DIR (<repo>/.kafka: data, logs, pid),
#      KAFKA_HEAP (-Xms256m -Xmx768m), KAFKA_START_TIMEOUT (60 s), KAFKA_JVM_OPTS, KAFKA_PYTHON (.venv python).
# Cluster: KAFKA_NODE_ID (1), KAFKA_VOTERS (controller.quorum.voters, default this node alone: 1@127.0.0.1:CPORT),
#      KAFKA_CLUSTER_ID (the id every node is formatted with; default a random one), KAFKA_REPLICATION (1: the
#      default replication factor of topics and of the internal ones), KAFKA_MIN_ISR (1: min.insync.replicas).
#      A node of a multi-node quorum is ready only once a majority of its voters is up: start them side by side.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/pidfile.sh
. "$ROOT/scripts/pidfile.sh"
LIB=$ROOT/deploy/kafka/lib
PORT=${KAFKA_PORT:-19092}
CPORT=${KAFKA_CONTROLLER_PORT:-19093}
HOME_DIR=${KAFKA_HOME_DIR:-$ROOT/.kafka}
HEAP=${KAFKA_HEAP:--Xms256m -Xmx768m}
TIMEOUT=${KAFKA_START_TIMEOUT:-60}
JVM_OPTS=${KAFKA_JVM_OPTS:--XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true}
PY=${KAFKA_PYTHON:-$ROOT/.venv/bin/python}
NODE_ID=${KAFKA_NODE_ID:-1}
VOTERS=${KAFKA_VOTERS:-$NODE_ID@127.0.0.1:$CPORT}
REPLICATION=${KAFKA_REPLICATION:-1}
MIN_ISR=${KAFKA_MIN_ISR:-1}

mkdir -p "$HOME_DIR"
HOME_DIR=$(cd "$HOME_DIR" && pwd)
PIDFILE=$HOME_DIR/kafka.pid
LOG=$HOME_DIR/logs/server.log
CONSOLE=$HOME_DIR/logs/console.log

pid_alive() {  # the pid file names a live Kafka JVM (not a recycled pid)
  [ -f "$PIDFILE" ] || return 1
  local pid; pid=$(cat "$PIDFILE")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && grep -qa kafka.Kafka "/proc/$pid/cmdline" 2>/dev/null
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The broker answers a metadata request: kafka-python if the venv has it, else kcat, else the log line.
probe() {
  if "$PY" -c 'import kafka' 2>/dev/null; then
    "$PY" - "$PORT" >/dev/null 2>&1 <<'EOF'
import sys
from kafka import KafkaAdminClient
admin = KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{sys.argv[1]}", request_timeout_ms=3000)
admin.list_topics()
admin.close()
EOF
  elif command -v kcat >/dev/null; then
    kcat -b "127.0.0.1:$PORT" -L -m 3 >/dev/null 2>&1
  else
    grep -q 'Kafka Server started' "$LOG" 2>/dev/null
  fi
}

LOG_FROM=1  # server.log is appended to across runs: show only this run's lines
fail() {
  echo "kafka: $*" >&2
  local f from
  for f in "$LOG" "$CONSOLE"; do
    from=1; [ "$f" = "$LOG" ] && from=$LOG_FROM
    [ -n "$(tail -n "+$from" "$f" 2>/dev/null | head -c1)" ] || continue
    echo "--- $f" >&2; tail -n "+$from" "$f" | tail -n 30 >&2
  done
  exit 1
}

write_config() {
  cat >"$HOME_DIR/server.properties" <<EOF
# Written by scripts/kafka.sh on each start; edits here are lost.
process.roles=broker,controller
node.id=$NODE_ID
controller.quorum.voters=$VOTERS
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$HOME_DIR/data
num.network.threads=2
num.io.threads=4
num.partitions=4
default.replication.factor=$REPLICATION
min.insync.replicas=$MIN_ISR
auto.create.topics.enable=false
offsets.topic.replication.factor=$REPLICATION
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=$REPLICATION
transaction.state.log.min.isr=$MIN_ISR
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=$REPLICATION
share.coordinator.state.topic.min.isr=$MIN_ISR
group.initial.rebalance.delay.ms=0
log.segment.bytes=16777216
log.retention.hours=24
log.retention.bytes=268435456
log.retention.check.interval.ms=60000
# The cleaner's dedupe buffer is allocated on the heap at start-up (128 MiB by default).
log.cleaner.dedupe.buffer.size=16777216
EOF
}

start() {
  if pid_alive; then echo "kafka: already running (pid $(cat "$PIDFILE"), 127.0.0.1:$PORT)"; return 0; fi
  rm -f "$PIDFILE"
  ls "$LIB"/kafka_2.13-*.jar >/dev/null 2>&1 || fail "no jars in $LIB: run 'make deploy/kafka/lib/.installed'"
  for p in "$PORT" "$CPORT"; do port_open "$p" && fail "port $p on 127.0.0.1 is already in use"; done
  mkdir -p "$HOME_DIR/data" "$HOME_DIR/logs"
  LOG_FROM=$(($( (cat "$LOG" 2>/dev/null || true) | wc -l) + 1))
  write_config
  local cp="$LIB/*" t0=$SECONDS
  if [ ! -f "$HOME_DIR/data/meta.properties" ]; then
    # A cluster id is 16 random bytes, URL-safe base64 without padding. It starts with '-' once in 64: given as
    # --cluster-id=ID, never as a separate word, or the option parser takes it for an option.
    local id=${KAFKA_CLUSTER_ID:-}
    [ -n "$id" ] || id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
    java -cp "$cp" -Dlog4j2.configurationFile="$ROOT/deploy/kafka/log4j2.yaml" -Dkafka.logs.dir="$HOME_DIR/logs" \
      kafka.tools.StorageTool format --cluster-id="$id" -c "$HOME_DIR/server.properties" >"$HOME_DIR/logs/format.log" 2>&1 \
      || { cat "$HOME_DIR/logs/format.log" >&2; fail "storage format failed"; }
  fi
  # setsid: its own session, so a Ctrl-C in the calling terminal or make does not reach the broker.
  # shellcheck disable=SC2086  # HEAP and JVM_OPTS are word lists
  setsid nohup java $HEAP $JVM_OPTS \
    -Dlog4j2.configurationFile="$ROOT/deploy/kafka/log4j2.yaml" -Dkafka.logs.dir="$HOME_DIR/logs" \
    -cp "$cp" kafka.Kafka "$HOME_DIR/server.properties" >"$CONSOLE" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$PIDFILE"
  while :; do
    # kill -0, not pid_alive: until setsid and nohup have exec'd, the cmdline is not java's yet.
    kill -0 "$pid" 2>/dev/null || { rm -f "$PIDFILE"; fail "broker exited during start-up"; }
    if port_open "$PORT" && probe; then break; fi
    [ $((SECONDS - t0)) -ge "$TIMEOUT" ] && { stop >/dev/null; fail "broker not ready after ${TIMEOUT}s"; }
    sleep 0.5
  done
  echo "kafka: up on 127.0.0.1:$PORT (pid $pid, $((SECONDS - t0))s, home $HOME_DIR)"
}

stop() {
  if ! pid_alive; then rm -f "$PIDFILE"; echo "kafka: not running"; return 0; fi
  stop_by_pidfile kafka "$PIDFILE" 30  # a single node shuts down in a few seconds
}

status() {
  if pid_alive; then echo "kafka: running (pid $(cat "$PIDFILE"), 127.0.0.1:$PORT, home $HOME_DIR)"
  else echo "kafka: not running"; return 3; fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  reset) stop; rm -rf "$HOME_DIR/data" "$HOME_DIR/logs" "$HOME_DIR/server.properties"; echo "kafka: data wiped" ;;
  *) echo "usage: $0 {start|stop|status|reset}" >&2; exit 2 ;;
esac
