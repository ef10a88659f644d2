"""Builds the documentation site, warnings as errors (needs the `docs` extra).

  python docs/build.py            # -> docs/_build/html/index.html
  python docs/build.py --open     # ... and opens it in a browser
  python docs/build.py --out DIR  # -> DIR/html

Every build rereads every page (the family pages are regenerated from the registry), so a
warning is reported every time, not only on the build that introduced it.
"""

from __future__ import annotations

import argparse
import sys
import time
import webbrowser
from pathlib import Path

DOCS = Path(__file__).resolve().parent


def build(out: Path = DOCS / "_build", *, quiet: bool = True) -> int:
  """Builds `out/html` from docs/ with warnings as errors; returns Sphinx's exit status."""
  from sphinx.cmd.build import build_main

  out = Path(out)
  args = ["-W", "--keep-going", "-E", "-b", "html", "-d", str(out / "doctrees")]
  if quiet:
    args.append("-q")
  return build_main([*args, str(DOCS), str(out / "html")])


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", type=Path, default=DOCS / "_build", help="output folder")
  parser.add_argument("--open", action="store_true", help="open the site in a browser")
  args = parser.parse_args(argv)
  start = time.perf_counter()
  status = build(args.out)
  index = (args.out / "html" / "index.html").resolve()
  if status:
    print(f"docs/build.py: the build failed (status {status}); see the messages above",
          file=sys.stderr)
    return status
  print(f"docs/build.py: built {index} in {time.perf_counter() - start:.0f} s")
  if args.open:
    webbrowser.open(index.as_uri())
  return 0


if __name__ == "__main__":
  sys.exit(main())
