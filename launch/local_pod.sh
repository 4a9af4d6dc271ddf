#!/usr/bin/env bash
# Runs N `moe-asr` processes on this machine as one jax.distributed job (a pod in miniature).
#
# Usage: launch/local_pod.sh [--dry-run] N <moe-asr args...>
#   launch/local_pod.sh 2 devices
#   launch/local_pod.sh 2 train --config tiny --workdir runs/pod
#
# Every process gets MOE_ASR_COORDINATOR=localhost:<free port>, MOE_ASR_NUM_PROCESSES=N and
# MOE_ASR_PROCESS_ID=i, which moe_asr.training.distributed.initialize() reads.
# Environment:
#   PYTHON         interpreter (default: python3 from PATH)
#   LOCAL_DEVICES  fake CPU devices per process (default 4), used when XLA_FLAGS is unset
#   JAX_PLATFORMS  default cpu
#   LOG_DIR        where process_<i>.log go (default: a new temporary directory)
#   PORT           coordinator port (default: a free one)
# Process 0's log is also streamed to stdout. If a process fails, the others are stopped and
# the script exits with its exit code after printing the end of its log.
set -euo pipefail

usage() {
  sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

die() {
  echo "local_pod.sh: $*" >&2
  exit 2
}

dry_run=0
case "${1:-}" in
  -h | --help)
    usage
    exit 0
    ;;
  --dry-run)
    dry_run=1
    shift
    ;;
esac

[[ $# -ge 1 ]] || {
  usage >&2
  exit 2
}
num_processes="$1"
shift
[[ "${num_processes}" =~ ^[1-9][0-9]*$ ]] ||
  die "N must be a positive integer (number of processes), got '${num_processes}'"
[[ $# -ge 1 ]] || die "no moe-asr arguments given (e.g. 'devices')"

python="${PYTHON:-python3}"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
local_devices="${LOCAL_DEVICES:-4}"
[[ "${local_devices}" =~ ^[1-9][0-9]*$ ]] ||
  die "LOCAL_DEVICES must be a positive integer, got '${local_devices}'"

if [[ -n "${PORT:-}" ]]; then
  port="${PORT}"
else
  # Bind port 0 and release it: the kernel hands out a port nothing else holds right now.
  port="$("${python}" -c 'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')"
fi

# Settings shared by every process; a value already in the environment wins.
shared_env=(
  "MOE_ASR_COORDINATOR=localhost:${port}"
  "MOE_ASR_NUM_PROCESSES=${num_processes}"
  "XLA_FLAGS=${XLA_FLAGS:---xla_force_host_platform_device_count=${local_devices}}"
  "JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}"
  "PYTHONPATH=${repo_root}${PYTHONPATH:+:${PYTHONPATH}}"
)
command=("${python}" -m moe_asr.cli "$@")

if ((dry_run)); then
  log_dir="${LOG_DIR:-<new temporary directory>}"
  for ((i = 0; i < num_processes; i++)); do
    printf '# process %d, log %s\n' "${i}" "${log_dir}/process_${i}.log"
    printf 'env'
    printf ' %q' "${shared_env[@]}" "MOE_ASR_PROCESS_ID=${i}" "${command[@]}"
    printf '\n'
  done
  exit 0
fi

log_dir="${LOG_DIR:-$(mktemp -d -t moe_asr_pod.XXXXXX)}"
mkdir -p "${log_dir}"
echo "local_pod.sh: ${num_processes} processes, coordinator localhost:${port}, logs in ${log_dir}"

declare -A log_of=() # pid -> log file of each process still running
stream_pid=""

stop_all() {
  local pid
  for pid in "${!log_of[@]}"; do
    kill -TERM "${pid}" 2>/dev/null || true
  done
  for pid in "${!log_of[@]}"; do
    wait "${pid}" 2>/dev/null || true
  done
  log_of=()
  if [[ -n "${stream_pid}" ]]; then
    kill -TERM "${stream_pid}" 2>/dev/null || true
    wait "${stream_pid}" 2>/dev/null || true
  fi
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for ((i = 0; i < num_processes; i++)); do
  log="${log_dir}/process_${i}.log"
  # Created here, not only by the background process's redirection (which runs after the
  # fork): tail below must find it, however the two are scheduled.
  : >"${log}"
  env "${shared_env[@]}" "MOE_ASR_PROCESS_ID=${i}" "${command[@]}" >"${log}" 2>&1 &
  log_of[$!]="${log}"
  if ((i == 0)); then
    # Follows process 0's log until that process ends (GNU tail reads the rest, then stops).
    tail -n +1 -f --pid="$!" "${log}" &
    stream_pid=$!
  fi
done

while ((${#log_of[@]} > 0)); do
  status=0
  wait -n -p finished "${!log_of[@]}" || status=$?
  log="${log_of[${finished}]}"
  unset "log_of[${finished}]"
  if ((status != 0)); then
    # Stop the rest first: they may be blocked in a collective waiting for the failed one.
    stop_all
    {
      echo "local_pod.sh: $(basename "${log}" .log) exited with status ${status}; end of ${log}:"
      tail -n 30 "${log}"
    } >&2
    exit "${status}"
  fi
done

wait "${stream_pid}" 2>/dev/null || true
stream_pid=""
echo "local_pod.sh: all ${num_processes} processes finished; logs in ${log_dir}"
