#!/usr/bin/env bash
# Deletes the TPU VM or pod slice (billing stops when it is gone).
#
#   tpu_scripts/delete.sh [--name NAME] [--zone ZONE] [--project P] [--dry-run]

set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"


parse_flags "$@"
tpu_vm delete "${TPU_NAME}" --quiet
