"""A progress bar that stays readable wherever its output goes.

On a terminal it is a tqdm bar (redrawn in place). Anywhere else (a CI log, `| tee`, a notebook's
captured output) redrawing with carriage returns would leave only the first frame, so it writes
plain lines instead: one every `every_percent` percent and a final 100% line. Without tqdm
(core installs lack it) a terminal gets no bar.
"""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TextIO, TypeVar

__all__ = ["progress_bar"]

T = TypeVar("T")


def progress_bar(
    items: Iterable[T],
    *,
    enabled: bool = True,
    desc: str = "",
    total: int | None = None,
    stream: TextIO | None = None,
    every_percent: float = 10.0,
) -> Iterable[T]:
  """Wraps `items` in a progress display.

  Args:
    items: the iterable to walk.
    enabled: False returns `items` untouched.
    desc: a label printed before the counts.
    total: the number of items, when `len(items)` does not give it.
    stream: where to write (default: standard error).
    every_percent: in line mode, the spacing of the progress lines.

  Returns:
    An iterable over the same items.

  Example:
    >>> import io
    >>> from jaxlearn.train import progress_bar
    >>> stream = io.StringIO()
    >>> total = sum(progress_bar(range(4), desc="steps", stream=stream))
    >>> "4/4" in stream.getvalue()
    True
  """
  if not enabled:
    return items
  stream = sys.stderr if stream is None else stream
  if total is None:
    total = len(items) if hasattr(items, "__len__") else None
  if getattr(stream, "isatty", lambda: False)():
    try:
      from tqdm.auto import tqdm
    except ImportError:
      return items
    return tqdm(items, desc=desc, total=total, leave=False, dynamic_ncols=True, file=stream)
  return _lines(items, desc, total, stream, every_percent)


def _lines(items, desc, total, stream, every_percent) -> Iterator:
  """Yields `items`, writing `desc: 40% 4/10 [3.2 s]` lines as the given percentages are passed."""
  label = f"{desc}: " if desc else ""
  start = time.perf_counter()
  next_percent = every_percent
  done = 0

  def write(text):
    stream.write(f"{label}{text} [{time.perf_counter() - start:.1f} s]\n")
    stream.flush()

  for item in items:
    yield item
    done += 1
    if total:
      percent = 100.0 * done / total
      if percent >= next_percent and done < total:
        write(f"{percent:.0f}% {done}/{total}")
        next_percent = (percent // every_percent + 1) * every_percent
  write(f"100% {done}/{total}" if total else f"done {done}")
