"""``python -m fftd_course reproduce``: its options and what it prints."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .recipe import FULL, QUICK
from .report import update_readme
from .runner import DEFAULT_CACHE, DEFAULT_OUT, run, store_for, summary
from .tables import TABLES

__all__ = ["add_arguments", "main"]


def _table(text: str) -> list[int]:
    if text == "all":
        return list(TABLES)
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n not in TABLES:
        raise argparse.ArgumentTypeError(f"{text!r}: choose one of {', '.join(map(str, TABLES))} or all")
    return [n]


def _seeds(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 1 <= n <= 20:
        raise argparse.ArgumentTypeError(f"must be between 1 and 20, got {n}")
    return n


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--table", type=_table, action="extend", required=True,
                   help=f"a table of the paper ({', '.join(map(str, TABLES))}) or all; repeat for several")
    p.add_argument("--seeds", type=_seeds, default=None,
                   help="training seeds per row (default 3; 1 with --quick); at least 2 give error bars")
    p.add_argument("--quick", action="store_true",
                   help="a preview: a quarter of the data and steps, fewer samples, one seed (about 15 minutes for "
                        "every table on a 2-core CPU); its tables go to the cache folder, never over the committed ones")
    p.add_argument("--jobs", type=_seeds, default=1,
                   help="worker processes of one thread each (2 on a 2-core machine)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                   help="where models, samples and each (table, row, seed) result are kept; a stopped run resumes")
    p.add_argument("--out", type=Path, default=None,
                   help=f"where table_N.json goes (default {DEFAULT_OUT} for the full recipe, CACHE/quick-*/tables "
                        "for --quick)")
    p.add_argument("--from-cache", action="store_true",
                   help="compute nothing: write the tables from the results already there (a table still missing "
                        "seeds is marked complete: false)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    recipe = QUICK if args.quick else FULL
    seeds = args.seeds or (1 if args.quick else 3)
    tables = sorted(set(args.table))
    start = time.perf_counter()
    print(f"reproducing table(s) {', '.join(map(str, tables))} with {seeds} seed(s), recipe {recipe.name!r}; cache "
          f"{store_for(recipe, args.cache).root}")
    files = run(tables, seeds, recipe, args.cache, args.out, args.jobs, progress=not args.quiet,
                compute=not args.from_cache)
    for path in files:
        print(f"wrote {path}")
    readme = DEFAULT_OUT.parents[1] / "README.md"
    if args.out is None and recipe is FULL and readme.is_file():
        if update_readme(readme, summary(DEFAULT_OUT)):
            print(f"updated the summary in {readme}")
    print(f"{time.perf_counter() - start:.0f} s")
    return 0
