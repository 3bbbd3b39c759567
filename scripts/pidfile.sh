# Sourced by scripts/kafka.sh and scripts/triton.sh: stop a server by its pid file.
#   stop_by_pidfile NAME PIDFILE SECONDS   TERM, wait up to SECONDS for a clean exit, then KILL.
# The caller checks first that the pid file names its live server (not a recycled pid).
stop_by_pidfile() {
  local name=$1 pidfile=$2 seconds=$3 pid
  pid=$(cat "$pidfile")
  kill -TERM "$pid"
  for _ in $(seq $((seconds * 5))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then echo "$name: pid $pid ignored TERM for ${seconds}s, killing" >&2; kill -KILL "$pid"; fi
  rm -f "$pidfile"
  echo "$name: stopped (pid $pid)"
}
