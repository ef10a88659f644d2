#!/usr/bin/env bash
# Copies a job's results (JSON, CSV, plots) from worker 0 to ./results/JOB.
#
#   tpu_scripts/fetch.sh [--name NAME] [--zone ZONE] [--job JOB] [--to DIR] [--dry-run]
#
# Only worker 0 writes results (python -m jaxlearn.launch), so one copy is complete.

set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"


DESTINATION=""
script_flag() {
  case "$1" in
    --to) DESTINATION="${2:?--to needs a directory}"; CONSUMED=2 ;;
    *) return 1 ;;
  esac
}

parse_flags "$@"
DESTINATION="${DESTINATION:-results}"
run mkdir -p "${DESTINATION}"
tpu_vm scp --recurse "${TPU_NAME}:${REMOTE_RESULTS}/${JOB}" "${DESTINATION}/" "--worker=${WORKER:-0}"
echo "results in ${DESTINATION}/${JOB}"
