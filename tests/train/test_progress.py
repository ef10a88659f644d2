"""Progress output is readable in logs: plain lines, no carriage returns, a final 100% line."""

import io

from jaxlearn.train import progress_bar


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_non_tty_output_is_plain_lines_ending_at_100_percent():
  stream = io.StringIO()
  assert list(progress_bar(range(20), desc="runs", stream=stream, every_percent=25)) == list(
      range(20))
  lines = stream.getvalue().splitlines()
  assert "\r" not in stream.getvalue()
  assert [line.split(" [")[0] for line in lines] == [
      "runs: 25% 5/20", "runs: 50% 10/20", "runs: 75% 15/20", "runs: 100% 20/20"]


def test_unknown_length_reports_the_count_at_the_end():
  stream = io.StringIO()
  assert sum(progress_bar((i for i in range(3)), stream=stream)) == 3
  assert stream.getvalue().startswith("done 3 [")


def test_a_terminal_gets_a_redrawn_bar_and_disabled_is_a_no_op():
  stream = _Terminal()
  assert list(progress_bar(range(3), stream=stream)) == [0, 1, 2]
  assert "\r" in stream.getvalue()  # tqdm redraws in place
  items = [1, 2]
  assert progress_bar(items, enabled=False) is items
