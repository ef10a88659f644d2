# shellcheck shell=bash disable=SC2034  # the settings here are read by the sourcing scripts
# Configuration and helpers shared by the jaxlearn Cloud TPU scripts. Sourced, never run.
#
# Every setting comes from a flag or, failing that, an environment variable (or the default):
#   --name NAME          JAXLEARN_TPU_NAME      TPU VM / pod slice name        (jaxlearn-tpu)
#   --zone ZONE          JAXLEARN_TPU_ZONE      Cloud zone                     (us-central2-b)
#   --project PROJECT    JAXLEARN_TPU_PROJECT   Cloud project                  (gcloud's default)
#   --type TYPE          JAXLEARN_TPU_TYPE      accelerator type, e.g. v4-8, v5litepod-16 (v4-8)
#   --version VERSION    JAXLEARN_TPU_VERSION   TPU software version           (from --type)
#   --spot               JAXLEARN_TPU_SPOT=1    Spot capacity: cheaper, can be preempted
#   --worker WORKER      JAXLEARN_TPU_WORKER    which workers: all, 0, 1...    (per script)
#   --job JOB            JAXLEARN_JOB           job name: log file and results directory (job)
#   --dry-run            JAXLEARN_DRY_RUN=1     print every command instead of running it

set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPT_DIR}/.." && pwd)"

TPU_NAME="${JAXLEARN_TPU_NAME:-jaxlearn-tpu}"
ZONE="${JAXLEARN_TPU_ZONE:-us-central2-b}"
PROJECT="${JAXLEARN_TPU_PROJECT:-}"
ACCELERATOR_TYPE="${JAXLEARN_TPU_TYPE:-v4-8}"
RUNTIME_VERSION="${JAXLEARN_TPU_VERSION:-}"
SPOT="${JAXLEARN_TPU_SPOT:-0}"
WORKER="${JAXLEARN_TPU_WORKER:-}"
JOB="${JAXLEARN_JOB:-job}"
DRY_RUN="${JAXLEARN_DRY_RUN:-0}"
# Paths on the workers, relative to the remote home directory.
REMOTE_REPO="jaxlearn"
REMOTE_VENV="jaxlearn-venv"
REMOTE_LOGS="jaxlearn-logs"
REMOTE_RESULTS="jaxlearn-results"
# What pip installs for jax on the workers (libtpu comes with the [tpu] extra).
JAX_SPEC="${JAXLEARN_JAX_SPEC:-jax[tpu]}"

EXTRA_ARGS=()

# Prints the calling script's header comment (every line after the shebang up to the first
# line that is not a comment), without the leading "# ".
usage() {
  awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"
}

die() {
  echo "$(basename "$0"): error: $*" >&2
  exit 2
}

# Parses the shared flags; anything after `--` (and any unknown word when the calling script
# allows it) is left in EXTRA_ARGS. usage() prints the calling script's header comment.
parse_flags() {
  while (($#)); do
    case "$1" in
      --name) TPU_NAME="${2:?--name needs a value}"; shift 2 ;;
      --zone) ZONE="${2:?--zone needs a value}"; shift 2 ;;
      --project) PROJECT="${2:?--project needs a value}"; shift 2 ;;
      --type) ACCELERATOR_TYPE="${2:?--type needs a value}"; shift 2 ;;
      --version) RUNTIME_VERSION="${2:?--version needs a value}"; shift 2 ;;
      --spot) SPOT=1; shift ;;
      --worker) WORKER="${2:?--worker needs a value}"; shift 2 ;;
      --job) JOB="${2:?--job needs a value}"; shift 2 ;;
      --dry-run) DRY_RUN=1; shift ;;
      -h | --help) usage; exit 0 ;;
      --) shift; EXTRA_ARGS+=("$@"); break ;;
      *)
        CONSUMED=0
        script_flag "$@" || die "unknown option '$1' (see --help)"
        shift "${CONSUMED}"
        ;;
    esac
  done
  [[ "${TPU_NAME}" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] \
    || die "--name must be lowercase letters, digits and dashes, got '${TPU_NAME}'"
  [[ "${JOB}" =~ ^[A-Za-z0-9._-]+$ ]] || die "--job must be letters, digits, '.', '_' or '-'"
  if [[ -z "${RUNTIME_VERSION}" ]]; then
    RUNTIME_VERSION="$(default_runtime_version "${ACCELERATOR_TYPE}")"
  fi
}

# Scripts with flags of their own redefine this after sourcing: on a flag they know, set
# CONSUMED to the number of words it takes and return 0; otherwise return 1.
script_flag() {
  return 1
}

# The TPU software version that goes with an accelerator type (check the current list with
# `gcloud compute tpus tpu-vm versions list --zone=ZONE`).
default_runtime_version() {
  case "$1" in
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    v5litepod-* | v5e-*) echo "v2-alpha-tpuv5-lite" ;;
    v5p-*) echo "v2-alpha-tpuv5" ;;
    v2-* | v3-* | v4-*) echo "tpu-ubuntu2204-base" ;;
    *) die "no default --version for --type '$1'; pass --version" ;;
  esac
}

# Prints a command (shell-quoted, so it can be pasted), then runs it unless --dry-run.
run() {
  printf '+'
  printf ' %q' "$@"
  printf '\n'
  if [[ "${DRY_RUN}" != 1 ]]; then
    "$@"
  fi
}

# `gcloud compute tpus tpu-vm VERB NAME ...` with the zone and project flags.
tpu_vm() {
  local verb="$1"
  shift
  local scope=("--zone=${ZONE}")
  if [[ -n "${PROJECT}" ]]; then
    scope+=("--project=${PROJECT}")
  fi
  run gcloud compute tpus tpu-vm "${verb}" "$@" "${scope[@]}"
}

# Runs a shell command line on the selected workers (default: all).
on_workers() {
  tpu_vm ssh "${TPU_NAME}" "--worker=${WORKER:-all}" "--command=$1"
}
