#!/usr/bin/env bash
# Runs an experiment as N jax.distributed processes on this machine (CPU).
#
# Usage:
#   launch/local_multiprocess.sh N MODULE [FLAGS...]
# e.g.
#   launch/local_multiprocess.sh 2 experiments.tsai2020.main \
#       --config=experiments/tsai2020/configs/digits.py --workdir=/tmp/run
#
# Starts N copies of `python -m MODULE FLAGS...` from the current directory,
# process i with JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT, JAX_NUM_PROCESSES=N,
# JAX_PROCESS_ID=i and JAX_PLATFORMS=cpu; capsjax.train's
# maybe_initialize_distributed() turns these into jax.distributed.initialize().
# Each output line is prefixed with "[i] ". Waits for all processes; as soon
# as one fails, stops the others (they would wait for it forever) and exits
# with its status. Ctrl-C / SIGTERM are passed on to every process.
#
# Environment:
#   PYTHON               interpreter (default: python3)
#   PORT                 coordinator port (default: a free port)
#   DEVICES_PER_PROCESS  simulated CPU devices per process (default 1), via
#                        XLA_FLAGS=--xla_force_host_platform_device_count
#   GRACE                seconds between SIGTERM and SIGKILL when stopping
#                        the other processes after a failure (default 10)
# Needs bash >= 4.3 (wait -n).
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
}

[[ $# -ge 2 ]] || usage
N=$1; MODULE=$2; shift 2
[[ $N =~ ^[1-9][0-9]*$ ]] || { echo "N: got '$N', expected a positive integer" >&2; exit 2; }
PYTHON=${PYTHON:-python3}
DEVICES_PER_PROCESS=${DEVICES_PER_PROCESS:-1}
[[ $DEVICES_PER_PROCESS =~ ^[1-9][0-9]*$ ]] || {
  echo "DEVICES_PER_PROCESS: got '$DEVICES_PER_PROCESS', expected a positive integer" >&2; exit 2; }
if [[ -z ${PORT:-} ]]; then
  PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi

xla_flags=${XLA_FLAGS:-}
if [[ $DEVICES_PER_PROCESS -gt 1 ]]; then
  xla_flags="$xla_flags --xla_force_host_platform_device_count=$DEVICES_PER_PROCESS"
fi

pids=()
# SIGTERM to every process still running; SIGKILL to those still running
# after GRACE seconds (a process blocked in start-up may not react to TERM).
stop_all() {
  local running t
  running=$(jobs -rp)
  [[ -n $running ]] || return 0
  kill -TERM $running 2>/dev/null || true
  for ((t = 0; t < ${GRACE:-10} * 5; t++)); do
    running=$(jobs -rp)
    [[ -n $running ]] || return 0
    sleep 0.2
  done
  echo "local_multiprocess: killing $(echo $running) after ${GRACE:-10} s" >&2
  kill -KILL $running 2>/dev/null || true
}
trap 'stop_all; wait; exit 130' INT
trap 'stop_all; wait; exit 143' TERM

echo "local_multiprocess: $N processes of '$MODULE', coordinator 127.0.0.1:$PORT" >&2
for ((i = 0; i < N; i++)); do
  # The prefixing sed runs in a process substitution, so $! is python's pid.
  JAX_COORDINATOR_ADDRESS="127.0.0.1:$PORT" JAX_NUM_PROCESSES="$N" \
    JAX_PROCESS_ID="$i" JAX_PLATFORMS=cpu XLA_FLAGS="$xla_flags" \
    "$PYTHON" -m "$MODULE" "$@" > >(sed -u "s/^/[$i] /") 2>&1 &
  pids+=($!)
done

status=0
remaining=$N
while [[ $remaining -gt 0 ]]; do
  set +e
  wait -n "${pids[@]}" 2>/dev/null  # (pids already reaped are ignored)
  rc=$?
  set -e
  remaining=$((remaining - 1))
  if [[ $rc -ne 0 && $status -eq 0 ]]; then
    status=$rc
    echo "local_multiprocess: a process exited with status $rc; stopping the others" >&2
    stop_all
  fi
done
wait  # the output-prefixing processes
exit "$status"
