"""Rewrite the README's family table from dit_cache.families (the data `dit-cache info` prints).

python scripts/families_table.py           # rewrite README.md between the families markers
python scripts/families_table.py --check   # exit 1 if README.md is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

START, END = "<!-- families:start -->", "<!-- families:end -->"
README = Path(__file__).resolve().parent.parent / "README.md"


def render(readme: str) -> str:
    """`readme` with the text between the markers replaced by the generated table."""
    from dit_cache.families import markdown

    if readme.count(START) != 1 or readme.count(END) != 1 or readme.index(START) > readme.index(END):
        raise SystemExit(f"README.md must hold one {START} ... {END} pair (in that order)")
    head, rest = readme.split(START)
    _, tail = rest.split(END)
    return f"{head}{START}\n{markdown()}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that README.md is up to date")
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args(argv)
    current = args.readme.read_text()
    wanted = render(current)
    if args.check:
        if current != wanted:
            print(f"{args.readme} is out of date: run python scripts/families_table.py", file=sys.stderr)
            return 1
        return 0
    if current != wanted:
        args.readme.write_text(wanted)
        print(f"rewrote the family table of {args.readme}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(README.parent))
    raise SystemExit(main())
