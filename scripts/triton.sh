#!/usr/bin/env bash
# Triton Inference Server on deploy/triton/models (a plain model repository, Python backend), for development,
# tests and benchmarks. The tritonserver binary is the one bundled in the nvidia-pytriton wheel; it runs on CPU.
#   scripts/triton.sh start|stop|status
# Env: TRITON_HTTP_PORT (18000), TRITON_GRPC_PORT (18001), TRITON_METRICS_PORT (18002), TRITON_ADDRESS (127.0.0.1),
#      TRITON_HOME_DIR (<repo>/.triton: pid, log, backend directory), TRITON_MODEL_REPOSITORY (deploy/triton/models),
#      TRITON_MODELS (yamnet_patches,text_embedder: the models loaded at start, comma-separated),
#      TRITON_START_TIMEOUT (180 s), TRITON_PYTHON (<repo>/.venv/bin/python: the models' Python and packages),
#      TRITON_CONTROL_KEY (default: random, kept in $TRITON_HOME_DIR/control.key, mode 600): the value of the
#      triton-control-key header that model control (load, unload, repository index), shared memory, trace and
#      logging calls must carry; inference, health, metadata, model config and statistics need none.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/pidfile.sh
. "$ROOT/scripts/pidfile.sh"
HTTP_PORT=${TRITON_HTTP_PORT:-18000}
GRPC_PORT=${TRITON_GRPC_PORT:-18001}
METRICS_PORT=${TRITON_METRICS_PORT:-18002}
ADDRESS=${TRITON_ADDRESS:-127.0.0.1}
HOME_DIR=${TRITON_HOME_DIR:-$ROOT/.triton}
REPOSITORY=${TRITON_MODEL_REPOSITORY:-$ROOT/deploy/triton/models}
MODELS=${TRITON_MODELS:-yamnet_patches,text_embedder}
TIMEOUT=${TRITON_START_TIMEOUT:-180}
PY=${TRITON_PYTHON:-$ROOT/.venv/bin/python}

mkdir -p "$HOME_DIR"
HOME_DIR=$(cd "$HOME_DIR" && pwd)
PIDFILE=$HOME_DIR/tritonserver.pid
LOG=$HOME_DIR/tritonserver.log
KEYFILE=$HOME_DIR/control.key
# What only a holder of the control key may call (Triton's names for its API groups, on gRPC and HTTP alike).
RESTRICTED=model-repository,shared-memory,trace,logging

control_key() {  # the given key, else this home's, else a new random one (the file readable by its owner only)
  if [ -n "${TRITON_CONTROL_KEY:-}" ]; then printf '%s' "$TRITON_CONTROL_KEY"; return; fi
  [ -s "$KEYFILE" ] || (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$KEYFILE")
  cat "$KEYFILE"
}

pid_alive() {  # the pid file names a live tritonserver (not a recycled pid)
  [ -f "$PIDFILE" ] || return 1
  local pid; pid=$(cat "$PIDFILE")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && grep -qa tritonserver "/proc/$pid/cmdline" 2>/dev/null
}

port_open() { (exec 3<>"/dev/tcp/$ADDRESS/$1") 2>/dev/null; }

model_ready() { curl -fs -o /dev/null "http://$ADDRESS:$HTTP_PORT/v2/models/$1/ready"; }

LAUNCHED=0  # the log is this run's only once the server was launched (each start truncates it)
fail() {
  echo "triton: $*" >&2
  if [ "$LAUNCHED" = 1 ] && [ -s "$LOG" ]; then echo "--- $LOG" >&2; grep -v '^$' "$LOG" | tail -n 30 >&2; fi
  exit 1
}

# The wheel's server tree: bin/tritonserver, backends/python (without its stub), one stub per Python version.
dist_dir() {
  "$PY" -c 'import importlib.util, pathlib; s = importlib.util.find_spec("pytriton")
print(pathlib.Path(next(iter(s.submodule_search_locations))) / "tritonserver")' 2>/dev/null \
    || fail "nvidia-pytriton is not installed for $PY (make setup)"
}

# The Python backend looks for its stub next to libtriton_python.so, and the wheel keeps one stub per Python
# version apart: assemble a backend directory with the stub of the models' Python.
backend_dir() {
  local dist=$1 version
  version=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  [ -x "$dist/python_backend_stubs/$version/triton_python_backend_stub" ] || fail "no Python backend stub for $version"
  mkdir -p "$HOME_DIR/backends/python"
  cp -f "$dist/backends/python/libtriton_python.so" "$dist/backends/python/triton_python_backend_utils.py" \
    "$dist/python_backend_stubs/$version/triton_python_backend_stub" "$HOME_DIR/backends/python/"
  echo "$HOME_DIR/backends"
}

start() {
  if pid_alive; then echo "triton: already running (pid $(cat "$PIDFILE"), gRPC $ADDRESS:$GRPC_PORT)"; return 0; fi
  rm -f "$PIDFILE"
  [ -x "$PY" ] || fail "no Python at $PY (make setup, or set TRITON_PYTHON)"
  [ -d "$REPOSITORY" ] || fail "no model repository at $REPOSITORY"
  for p in "$HTTP_PORT" "$GRPC_PORT" "$METRICS_PORT"; do port_open "$p" && fail "port $p on $ADDRESS is already in use"; done
  local dist backends libdir key load=() model t0=$SECONDS
  key=$(control_key)
  IFS=, read -ra names <<<"$MODELS"
  for model in "${names[@]}"; do
    [ -f "$REPOSITORY/$model/config.pbtxt" ] || fail "no model '$model' in $REPOSITORY"
    load+=("--load-model=$model")
  done
  dist=$(dist_dir)
  echo "triton: server $dist/bin/tritonserver"
  backends=$(backend_dir "$dist")
  # The stub embeds libpython: without the models' own LIBDIR first it loads the system libpython, which fails
  # on import ('_thread.RLock' object has no attribute '_recursion_count'). The venv's bin first on PATH makes
  # the embedded interpreter use the venv's site-packages. The wheel's own libs: the copied backend lost its rpath.
  libdir=$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')
  # setsid: its own session, so a Ctrl-C in the calling terminal or make does not reach the server.
  LD_LIBRARY_PATH="$libdir:$(dirname "$dist")/../nvidia_pytriton.libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
  PATH="$(dirname "$PY"):$PATH" \
  setsid nohup "$dist/bin/tritonserver" \
    --model-repository="$REPOSITORY" --model-control-mode=explicit "${load[@]}" \
    --grpc-restricted-protocol="$RESTRICTED:triton-control-key=$key" \
    --http-restricted-api="$RESTRICTED:triton-control-key=$key" \
    --backend-directory="$backends" \
    --http-address="$ADDRESS" --http-port="$HTTP_PORT" \
    --grpc-address="$ADDRESS" --grpc-port="$GRPC_PORT" \
    --metrics-address="$ADDRESS" --metrics-port="$METRICS_PORT" --allow-gpu-metrics=false \
    --exit-timeout-secs=15 >"$LOG" 2>&1 </dev/null &
  local pid=$!
  LAUNCHED=1
  echo "$pid" >"$PIDFILE"
  # The server's own readiness answers before the models load: wait for each model's.
  for model in "${names[@]}"; do
    until model_ready "$model"; do
      kill -0 "$pid" 2>/dev/null || { rm -f "$PIDFILE"; fail "server exited during start-up"; }
      [ $((SECONDS - t0)) -ge "$TIMEOUT" ] && { stop >/dev/null; fail "model $model not ready after ${TIMEOUT}s"; }
      sleep 0.2
    done
  done
  echo "triton: up on $ADDRESS (HTTP $HTTP_PORT, gRPC $GRPC_PORT, metrics $METRICS_PORT; pid $pid, $((SECONDS - t0))s," \
       "models $MODELS; log $LOG)"
}

stop() {
  if ! pid_alive; then rm -f "$PIDFILE"; echo "triton: not running"; return 0; fi
  stop_by_pidfile triton "$PIDFILE" 20  # Triton drains in-flight requests and unloads its models first
}

status() {
  pid_alive || { echo "triton: not running"; return 3; }
  echo "triton: running (pid $(cat "$PIDFILE"), HTTP $ADDRESS:$HTTP_PORT, gRPC $ADDRESS:$GRPC_PORT, home $HOME_DIR)"
  curl -fs -X POST -H "triton-control-key: $(control_key)" "http://$ADDRESS:$HTTP_PORT/v2/repository/index" \
    -d '{"ready": true}' && echo
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 {start|stop|status}" >&2; exit 2 ;;
esac
