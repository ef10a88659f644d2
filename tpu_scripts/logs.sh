#!/usr/bin/env bash
# Streams a job's log from one worker (default: worker 0, the one that writes results).
#
#   tpu_scripts/logs.sh [--name NAME] [--zone ZONE] [--job JOB] [--worker N] [--dry-run]
#
# Stops with Ctrl-C (the job keeps running). Every worker logs to ~/jaxlearn-logs/JOB.log.

set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"


parse_flags "$@"
WORKER="${WORKER:-0}"
on_workers "tail -n +1 -F ~/${REMOTE_LOGS}/${JOB}.log"
