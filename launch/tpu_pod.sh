#!/usr/bin/env bash
# Runs `moe-asr` on every worker of a Cloud TPU VM pod slice and brings the logs back.
#
# Usage: launch/tpu_pod.sh [--dry-run] TPU_NAME ZONE <moe-asr args...>
#   launch/tpu_pod.sh my-v4-32 us-central2-b train --config large --workdir gs://b/run1
#
# Steps, each on all workers at once (gcloud compute tpus tpu-vm ssh/scp --worker=all):
#   1. put the code in REMOTE_DIR: this checkout packed and copied (without .git, data, runs,
#      logs), or `git clone` of REPO_URL at REF when REPO_URL is set;
#   2. pip install -e '.[tpu]';
#   3. python3 -m moe_asr.cli <args>, output to REMOTE_DIR/tpu_logs/<run id>/<hostname>.log
#      (MOE_ASR_DISTRIBUTED=auto: jax.distributed.initialize() finds the pod's workers);
#   4. copy the logs back to ./tpu_logs/TPU_NAME/<run id>/, also when step 3 failed.
# Environment:
#   PROJECT     Google Cloud project (default: gcloud's configured one)
#   REPO_URL    git URL to clone on the workers instead of copying this checkout
#   REF         branch, tag or commit of REPO_URL (default HEAD, the default branch)
#   REMOTE_DIR  directory on the workers, relative to the home directory (default moe_asr)
# --dry-run prints every command exactly as it would run them, and runs nothing.
set -euo pipefail

usage() {
  sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

die() {
  echo "tpu_pod.sh: $*" >&2
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
if [[ $# -lt 3 ]]; then
  usage >&2
  die "need TPU_NAME, ZONE and the moe-asr arguments"
fi
tpu_name="$1"
zone="$2"
shift 2

remote_dir="${REMOTE_DIR:-moe_asr}"
ref="${REF:-HEAD}"
run_id="$(date +%Y%m%d-%H%M%S)"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
local_logs="tpu_logs/${tpu_name}"
archive="/tmp/moe_asr_code_${run_id}.tar.gz"

gcloud_tpu=(gcloud compute tpus tpu-vm)
common_flags=(--zone "${zone}" --worker=all)
if [[ -n "${PROJECT:-}" ]]; then
  common_flags+=(--project "${PROJECT}")
fi

# Quotes one word for a shell, readably: bare, "double" when that is safe, else 'single'.
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$1"
  elif [[ "$1" != *[\"\$\`\\!]* ]]; then
    printf '"%s"' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Prints the command (quoted, so it can be pasted), then runs it unless --dry-run.
run() {
  local word line="+"
  for word in "$@"; do
    line+=" $(quote "${word}")"
  done
  printf '%s\n' "${line}"
  if ((!dry_run)); then
    "$@"
  fi
}

# Runs a shell command line on every worker.
on_workers() {
  run "${gcloud_tpu[@]}" ssh "${tpu_name}" "${common_flags[@]}" --command "$1"
}

if ((!dry_run)) && ! command -v gcloud >/dev/null; then
  die "gcloud not found on PATH (https://cloud.google.com/sdk/docs/install)"
fi

q_dir="$(printf '%q' "${remote_dir}")"

# 1. Code.
if [[ -n "${REPO_URL:-}" ]]; then
  q_url="$(printf '%q' "${REPO_URL}")"
  q_ref="$(printf '%q' "${ref}")"
  on_workers "set -e; [ -d ${q_dir}/.git ] || git clone --no-checkout ${q_url} ${q_dir}; \
cd ${q_dir} && git fetch --depth=1 origin ${q_ref} && git checkout --force FETCH_HEAD"
else
  # A packed copy of the checkout, without history, data or outputs that do not belong on a
  # worker (runs and data can be large; workdirs on a pod live in gs://).
  run tar -czf "${archive}" -C "${repo_root}" --exclude=.git --exclude=./data --exclude=./runs \
    --exclude=./tpu_logs --exclude='*.egg-info' --exclude=__pycache__ --exclude=.venv .
  run "${gcloud_tpu[@]}" scp "${archive}" "${tpu_name}:/tmp/moe_asr_code.tar.gz" "${common_flags[@]}"
  run rm -f "${archive}"
  on_workers "set -e; mkdir -p ${q_dir} && tar -xzf /tmp/moe_asr_code.tar.gz -C ${q_dir} \
&& rm -f /tmp/moe_asr_code.tar.gz"
fi

# 2. Install.
on_workers "set -e; cd ${q_dir} && python3 -m pip install -e '.[tpu]'"

# 3. Run on all workers together; the exit status is kept so the logs are collected anyway.
remote_args=""
for arg in "$@"; do
  remote_args+=" $(printf '%q' "${arg}")"
done
remote_log_dir="tpu_logs/${run_id}"
status=0
on_workers "cd ${q_dir} && mkdir -p ${remote_log_dir} && MOE_ASR_DISTRIBUTED=auto \
python3 -m moe_asr.cli${remote_args} > ${remote_log_dir}/\$(hostname).log 2>&1; \
code=\$?; tail -n 5 ${remote_log_dir}/\$(hostname).log; exit \$code" || status=$?

# 4. Logs.
run mkdir -p "${local_logs}"
run "${gcloud_tpu[@]}" scp --recurse "${tpu_name}:${remote_dir}/${remote_log_dir}" \
  "${local_logs}/" "${common_flags[@]}"

if ((!dry_run)); then
  if ((status != 0)); then
    echo "tpu_pod.sh: a worker failed (status ${status}); logs in ${local_logs}/${run_id}" >&2
  else
    echo "tpu_pod.sh: done; logs in ${local_logs}/${run_id}"
  fi
fi
exit "${status}"
