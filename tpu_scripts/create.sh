#!/usr/bin/env bash
# Creates a Cloud TPU VM or pod slice.
#
#   tpu_scripts/create.sh [--name NAME] [--zone ZONE] [--project P] [--type v4-32] [--spot]
#                         [--version VERSION] [--dry-run]
#
# The slice size is --type: v4-8 / v5p-8 / v5litepod-8 / v6e-8 are one host; bigger ones are
# several hosts (workers) that the other scripts drive together with --worker=all.

set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"


parse_flags "$@"
spot=()
if [[ "${SPOT}" == 1 ]]; then
  spot=(--spot)
fi
tpu_vm create "${TPU_NAME}" "--accelerator-type=${ACCELERATOR_TYPE}" \
  "--version=${RUNTIME_VERSION}" "${spot[@]}"
