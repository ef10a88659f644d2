#!/usr/bin/env bash
# From nothing to results: create the TPU, install, run the job in the foreground on every
# worker, copy the results back, delete the TPU (also when a step fails, unless --keep).
#
#   tpu_scripts/run_all.sh [--name NAME] [--zone ZONE] [--project P] [--type TYPE] [--spot]
#       [--job JOB] [--keep] [--dry-run] -- JOB ARGS (as for launch.sh)
#
# Example: tpu_scripts/run_all.sh --type v5litepod-16 --spot --job lr -- \
#            sweep optax.adam --param learning_rate=logspace:1e-4:1e-1:16 --seeds 0,1,2,3

set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"


KEEP=0
script_flag() {
  case "$1" in
    --keep) KEEP=1; CONSUMED=1 ;;
    *) return 1 ;;
  esac
}

parse_flags "$@"
((${#EXTRA_ARGS[@]})) || die "give the job after --, e.g. -- run quickstart"
shared=(--name "${TPU_NAME}" --zone "${ZONE}" --job "${JOB}")
if [[ -n "${PROJECT}" ]]; then
  shared+=(--project "${PROJECT}")
fi
if [[ "${DRY_RUN}" == 1 ]]; then
  shared+=(--dry-run)
fi
spot=()
if [[ "${SPOT}" == 1 ]]; then
  spot=(--spot)
fi

cleanup() {
  if [[ "${KEEP}" == 0 ]]; then
    "${SCRIPT_DIR}/delete.sh" "${shared[@]}"
  else
    echo "kept ${TPU_NAME}; delete it with tpu_scripts/delete.sh --name ${TPU_NAME} --zone ${ZONE}"
  fi
}

"${SCRIPT_DIR}/create.sh" "${shared[@]}" --type "${ACCELERATOR_TYPE}" \
  --version "${RUNTIME_VERSION}" "${spot[@]}"
trap cleanup EXIT
"${SCRIPT_DIR}/install.sh" "${shared[@]}"
"${SCRIPT_DIR}/launch.sh" "${shared[@]}" --foreground -- "${EXTRA_ARGS[@]}"
"${SCRIPT_DIR}/fetch.sh" "${shared[@]}"
