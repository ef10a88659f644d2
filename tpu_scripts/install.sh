#!/usr/bin/env bash
# Installs jaxlearn (this checkout) and jax for TPUs on every worker.
#
#   tpu_scripts/install.sh [--name NAME] [--zone ZONE] [--project P] [--worktree] [--dry-run]
#
# Ships the committed HEAD of this repository (`git archive`), or with --worktree the working
# tree as it is (without .git, .venv and results), to ~/jaxlearn on every worker, then creates
# ~/jaxlearn-venv there and pip-installs JAXLEARN_JAX_SPEC (default 'jax[tpu]') and
# jaxlearn[experiments].

set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"


WORKTREE=0
script_flag() {
  case "$1" in
    --worktree) WORKTREE=1; CONSUMED=1 ;;
    *) return 1 ;;
  esac
}

parse_flags "$@"
tarball="${TMPDIR:-/tmp}/${TPU_NAME}-jaxlearn.tar.gz"
if [[ "${WORKTREE}" == 1 ]]; then
  run tar -czf "${tarball}" -C "${REPO_ROOT}" --exclude=.git --exclude=.venv --exclude=results \
    --exclude=__pycache__ .
else
  run git -C "${REPO_ROOT}" archive --format=tar.gz --output="${tarball}" HEAD
fi
WORKER="${WORKER:-all}"
tpu_vm scp "${tarball}" "${TPU_NAME}:jaxlearn.tar.gz" "--worker=${WORKER}"
on_workers "set -e
rm -rf ~/${REMOTE_REPO} && mkdir -p ~/${REMOTE_REPO}
tar -xzf ~/jaxlearn.tar.gz -C ~/${REMOTE_REPO}
python3 -m venv ~/${REMOTE_VENV}
~/${REMOTE_VENV}/bin/pip install --quiet --upgrade pip
~/${REMOTE_VENV}/bin/pip install --quiet '${JAX_SPEC}'
~/${REMOTE_VENV}/bin/pip install --quiet ~/${REMOTE_REPO}'[experiments]'
~/${REMOTE_VENV}/bin/python -c 'import jax, jaxlearn; print(jax.process_index(), jax.local_devices())'"
