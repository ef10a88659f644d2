"""A progress bar that degrades gracefully when tqdm is not installed."""

from __future__ import annotations

from typing import Iterable, TypeVar

T = TypeVar("T")


def progress_bar(items: Iterable[T], *, enabled: bool = True, desc: str = "") -> Iterable[T]:
  """Wraps `items` in a tqdm bar when enabled and tqdm is available (core installs lack it)."""
  if not enabled:
    return items
  try:
    from tqdm.auto import tqdm
  except ImportError:
    return items
  return tqdm(items, desc=desc, leave=False, dynamic_ncols=True)
