#!/usr/bin/env bash
# Starts an experiment or a sweep on every worker at once (each runs python -m jaxlearn.launch).
#
#   tpu_scripts/launch.sh [--name NAME] [--zone ZONE] [--job JOB] [--foreground] [--dry-run] \
#       [--distributed on|auto|off] -- run EXPERIMENT [--quick] | sweep OPTIMIZER --param ...
#
# Everything after `--` goes to `python -m jaxlearn.launch --distributed=on` (on: Cloud TPU
# workers find each other through the TPU metadata; auto/off for other hosts), which joins the
# workers into one JAX job, builds the device mesh and writes results from worker 0 only, to
# ~/jaxlearn-results/JOB unless you pass --out. Launch flags such as --mesh runs=4,data=8 go
# first: `-- --mesh data=-1 run quickstart`. Without --foreground the job runs in the
# background and logs to ~/jaxlearn-logs/JOB.log on each worker (follow it with logs.sh).

set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"


FOREGROUND=0
DISTRIBUTED="on"
script_flag() {
  case "$1" in
    --foreground) FOREGROUND=1; CONSUMED=1 ;;
    --distributed) DISTRIBUTED="${2:?--distributed needs on, auto or off}"; CONSUMED=2 ;;
    *) return 1 ;;
  esac
}

parse_flags "$@"
[[ "${DISTRIBUTED}" =~ ^(on|auto|off)$ ]] || die "--distributed must be on, auto or off"
((${#EXTRA_ARGS[@]})) || die "give the job after --, e.g. -- sweep optax.adam --param learning_rate=1e-3,1e-2"
job_args=("${EXTRA_ARGS[@]}")
# printf %q quotes each word for the one shell that runs the command on the worker.
quoted="$(printf ' %q' "${job_args[@]}")"
has_out=0
for word in "${job_args[@]}"; do
  if [[ "${word}" == --out || "${word}" == --out=* ]]; then
    has_out=1
  fi
done
if [[ "${has_out}" == 0 ]]; then
  quoted+=" --out ~/${REMOTE_RESULTS}/${JOB}"  # JOB is checked to be a plain name
fi
# shellcheck disable=SC2088  # "~" is for the worker's shell to expand
job="~/${REMOTE_VENV}/bin/python -m jaxlearn.launch --distributed=${DISTRIBUTED}${quoted}"
prepare="mkdir -p ~/${REMOTE_LOGS} ~/${REMOTE_RESULTS} && cd ~/${REMOTE_REPO}"
if [[ "${FOREGROUND}" == 1 ]]; then
  on_workers "${prepare} && ${job}"
else
  # All three streams redirected, so that ssh returns while the job runs on.
  on_workers "${prepare} && nohup ${job} > ~/${REMOTE_LOGS}/${JOB}.log 2>&1 < /dev/null &"
  echo "started job '${JOB}'; follow it with: tpu_scripts/logs.sh --name ${TPU_NAME} --zone ${ZONE} --job ${JOB}"
fi
