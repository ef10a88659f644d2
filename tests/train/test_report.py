"""The reproductions page: the committed one covers every experiment, and the writer works."""

import json
from pathlib import Path

from jaxlearn import registry
from jaxlearn.cli import experiment_names
from jaxlearn.train import report

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "reproductions.md"


def _record(name, *, quick=False, claim_held=True):
  return {
      "experiment": name, "quick": quick, "paper_claim": f"{name} claim.",
      "measured": f"{name} measured.", "claim_held": None if quick else claim_held,
      "wall_time_s": 90.0, "created": "2025-01-02T03:04:05+0000",
      "versions": {"jax": "0.0.1", "devices": "cpu"},
  }


def test_committed_page_lists_every_experiment_and_its_plot():
  text = PAGE.read_text()
  for method in registry.all_methods():
    if method.experiment:
      assert f"### {method.slug}\n" in text, method.slug
      assert f"`{method.experiment}`" in text, method.experiment
  for name in experiment_names():
    assert f"jaxlearn run {name}`" in text, name
    plot = PAGE.parent / "reproductions" / f"{name}.png"
    assert (f"(reproductions/{name}.png)" in text) == plot.is_file(), name


def test_committed_page_is_what_the_writer_makes_of_its_own_plots():
  """Every plot beside the page belongs to an entry the page shows as run, and vice versa."""
  text = PAGE.read_text()
  shown = {line.split("(reproductions/")[1].split(".png")[0]
           for line in text.splitlines() if line.startswith("![")}
  assert shown == {p.stem for p in (PAGE.parent / "reproductions").glob("*.png")}


def test_writer_reads_full_runs_copies_plots_and_lists_the_rest(tmp_path):
  results, page = tmp_path / "results", tmp_path / "docs" / "page.md"
  results.mkdir()
  method = next(m for m in registry.all_methods() if m.experiment)
  held = Path(method.experiment).stem
  (results / f"{held}.json").write_text(json.dumps(_record(held)))
  (results / f"{held}.png").write_bytes(b"\x89PNG fake plot")
  (results / "quickstart.json").write_text(json.dumps(_record("quickstart", quick=True)))
  (results / "quickstart.png").write_bytes(b"\x89PNG quick")
  (results / "sweep_adam.json").write_text(json.dumps({"rows": []}))  # not an experiment's
  (results / "broken.json").write_text("{")

  verdicts = report.write_report(results, page)

  assert verdicts[held] == "held"
  assert verdicts["quickstart"] == report.NOT_RUN  # smoke runs are never reported
  assert set(verdicts) == set(experiment_names())
  text = page.read_text()
  assert f"### {method.slug}\n" in text and method.title in text
  assert f"- Claim tested: {held} claim." in text and f"- Measured: {held} measured." in text
  assert f"![{held}](page/{held}.png)" in text
  assert (tmp_path / "docs" / "page" / f"{held}.png").read_bytes() == b"\x89PNG fake plot"
  assert not (tmp_path / "docs" / "page" / "quickstart.png").exists()
  # One section per entry: a method each (several may share an experiment), then the others.
  methods, others = report._entries()
  assert text.count(f"**{report.NOT_RUN}**") == sum(n != held for _, _, n in methods + others)
  assert f"{len(verdicts)} experiments: 1 held, {len(verdicts) - 1} {report.NOT_RUN}." in text


def test_report_command(tmp_path, capsys):
  from jaxlearn import cli

  page = tmp_path / "docs" / "reproductions.md"
  assert cli.main(["report", "--results", str(tmp_path / "none"), "--page", str(page)]) == 0
  assert page.is_file() and (tmp_path / "docs" / "reproductions").is_dir()
  assert f"{len(experiment_names())} {report.NOT_RUN}" in capsys.readouterr().out


def test_verdicts_and_stale_plots(tmp_path):
  results, page = tmp_path / "results", tmp_path / "page.md"
  results.mkdir()
  names = [Path(m.experiment).stem for m in registry.all_methods() if m.experiment][:2]
  for name, held in zip(names, (False, None)):
    (results / f"{name}.json").write_text(json.dumps(_record(name, claim_held=held)))
  (tmp_path / "page").mkdir()
  (tmp_path / "page" / "gone.png").write_bytes(b"old")

  verdicts = report.write_report(results, page)

  assert [verdicts[n] for n in names] == ["not reproduced", "undecided at this scale"]
  assert not (tmp_path / "page" / "gone.png").exists()
  assert "![" not in page.read_text()  # no plot was written, so none is shown
