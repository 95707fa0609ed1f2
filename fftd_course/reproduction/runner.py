"""Run tables: every (table, row, seed) once (cached), then one ``table_N.json`` per table with means, spreads
and verdicts. ``python -m fftd_course reproduce --table N [--seeds 3] [--quick] [--jobs 2]``.
"""

from __future__ import annotations

import math
import multiprocessing
import statistics
import time
from pathlib import Path
from typing import Any, Iterable

import torch
from tqdm.auto import tqdm

from .experiments import Lab, finite
from .recipe import FULL, QUICK, Recipe, machine
from .store import Store, read_json, write_json
from .tables import TABLES, Claim, Table

__all__ = ["Job", "jobs_for", "run_job", "run", "aggregate", "verdict", "summary", "DEFAULT_CACHE", "DEFAULT_OUT",
           "load_table"]

DEFAULT_CACHE = Path("runs/reproduction")
# The committed results sit in the repository beside the package (an editable install, as the course uses).
DEFAULT_OUT = Path(__file__).resolve().parents[2] / "docs" / "reproduction"
Job = tuple[int, str, int]  # (table, row, seed)


def store_for(recipe: Recipe, cache: Path) -> Store:
    """Models and samples: large, never committed."""
    return Store(Path(cache) / f"{recipe.name}-{recipe.key()}")


def results_for(recipe: Recipe, cache: Path) -> Store:
    """The (table, row, seed) results: the full recipe's are small and committed with the tables
    (``docs/reproduction/full-<key>/``), so a stopped run, even on another machine, resumes from every finished row."""
    if recipe.name == "full":
        return Store(DEFAULT_OUT / f"{recipe.name}-{recipe.key()}")
    return store_for(recipe, cache)


def jobs_for(tables: Iterable[int], seeds: int) -> list[Job]:
    """Seed by seed, so that a stopped run has whole seeds of every table first."""
    return [(n, row.id, seed) for seed in range(seeds) for n in tables for row in TABLES[n].rows]


def _result_name(job: Job) -> str:
    n, row, seed = job
    return f"results/table{n}/{row}/seed{seed}.json"


def run_job(lab: Lab, job: Job) -> dict[str, Any]:
    """The measures of one (table, row, seed), computed once: what it trained and sampled is cached too."""
    n, row_id, seed = job
    row = next(r for r in TABLES[n].rows if r.id == row_id)

    def compute() -> dict[str, Any]:
        torch.manual_seed(seed)
        start = time.perf_counter()
        values = row.measure(lab, seed)
        return {"values": values, "seconds": round(time.perf_counter() - start, 2), "machine": machine()}

    return lab.results.get(_result_name(job), compute)


_LAB: Lab | None = None


def _worker_init(recipe: Recipe, root: str, results: str) -> None:
    global _LAB
    torch.set_num_threads(1)  # the toy models run fastest on one thread; two workers share two cores
    _LAB = Lab(recipe, Store(Path(root)), results=Store(Path(results)))


def _worker(job: Job) -> Job:
    run_job(_LAB, job)
    return job


def run(tables: Iterable[int], seeds: int = 3, recipe: Recipe = FULL, cache: Path = DEFAULT_CACHE,
        out: Path | None = None, jobs: int = 1, progress: bool = True, compute: bool = True) -> list[Path]:
    """Compute every missing (table, row, seed) of ``tables`` and write ``out/table_N.json``; returns the files.

    ``compute=False`` only writes the tables from the results already there (a table missing seeds of some rows
    is written with ``"complete": false``).
    """
    tables = list(tables)
    store, results = store_for(recipe, cache), results_for(recipe, cache)
    todo = [j for j in jobs_for(tables, seeds) if not results.has(_result_name(j))] if compute else []
    bar = tqdm(total=len(todo), desc="reproduction (table, row, seed)", disable=not progress)
    if jobs > 1 and len(todo) > 1:
        context = multiprocessing.get_context("spawn")
        with context.Pool(jobs, _worker_init, (recipe, str(store.root), str(results.root))) as pool:
            for job in pool.imap_unordered(_worker, todo, chunksize=1):
                bar.update(1)
                bar.set_postfix_str(f"table {job[0]} {job[1]} seed {job[2]}")
    else:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            lab = Lab(recipe, store, results=results)
            for job in todo:
                bar.set_postfix_str(f"table {job[0]} {job[1]} seed {job[2]}")
                run_job(lab, job)
                bar.update(1)
        finally:
            torch.set_num_threads(threads)
    bar.close()
    out = Path(out) if out is not None else (DEFAULT_OUT if recipe.name == "full" else store.root / "tables")
    return [write_json(aggregate(TABLES[n], _by_row(results, n, seeds), recipe, seeds), out / f"table_{n}.json")
            for n in tables]


def _by_row(results: Store, n: int, seeds: int) -> dict[str, dict[int, dict]]:
    """The stored results of table ``n``'s rows, seed by seed (missing ones left out)."""
    found = {}
    for r in TABLES[n].rows:
        names = {s: _result_name((n, r.id, s)) for s in range(seeds)}
        found[r.id] = {s: read_json(results.root / name) for s, name in names.items() if results.has(name)}
    return found


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for k, v in values.items():
        if isinstance(v, dict):
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[prefix + k] = v
    return flat


def _spread(per_seed: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and sample standard deviation over seeds of every numeric measure."""
    mean, std = {}, {}
    for key in per_seed[0]:
        xs = [s.get(key) for s in per_seed]
        if all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in xs):
            mean[key] = statistics.fmean(xs)
            std[key] = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return mean, std


def verdict(claim: Claim, rows: dict[str, dict]) -> dict[str, Any]:
    """Does our table agree with the paper's claim? "agrees" / "disagrees" when the difference of the means is
    larger than twice its standard error over seeds, else "inside the noise"; "one seed" while a row has fewer
    than two (no error bar yet: nothing is decided), "not measured" before it has any."""
    b, w = rows[claim.better], rows[claim.worse]
    mb, mw = b["mean"].get(claim.metric), w["mean"].get(claim.metric)
    if mb is None or mw is None:
        return {"verdict": "not measured"}
    if min(len(b["seeds"]), len(w["seeds"])) < 2:
        return {"verdict": "one seed", "difference": (mb - mw) if claim.higher else (mw - mb), "standard_error": None}
    se = math.sqrt(b["std"][claim.metric] ** 2 / len(b["seeds"]) + w["std"][claim.metric] ** 2 / len(w["seeds"]))
    gain = (mb - mw) if claim.higher else (mw - mb)  # > 0: the paper's direction
    decided = abs(gain) > 2 * se
    word = ("agrees" if gain > 0 else "disagrees") if decided else "inside the noise"
    return {"verdict": word, "difference": gain, "standard_error": se}


def _row(row, found: dict[int, dict]) -> dict[str, Any]:
    flat = [_flatten(found[s]["values"]) for s in sorted(found)]
    mean, std = _spread(flat) if flat else ({}, {})
    return {"id": row.id, "label": row.label, "paper": row.paper,
            "seeds": {str(s): {k: finite(v) if isinstance(v, float) else v for k, v in f.items()}
                      for s, f in zip(sorted(found), flat)},
            "mean": mean, "std": std, "seconds": round(sum(r["seconds"] for r in found.values()), 1)}


def aggregate(table: Table, by_row: dict[str, dict[int, dict]], recipe: Recipe, seeds: int | None = None
              ) -> dict[str, Any]:
    """One table's JSON: every seed's values, mean and std per row, the paper's values, the claims' verdicts.

    ``seeds``: how many each row should have (default: as many as the first row has); a row with fewer (a run
    still going) makes ``"complete": false``, and ``"seeds"`` is the smallest count over the rows.
    """
    rows = {row.id: _row(row, by_row[row.id]) for row in table.rows}
    counts = [len(r["seeds"]) for r in rows.values()]
    wanted = seeds if seeds is not None else counts[0]
    claims = [{"claim": c.text, "better": c.better, "worse": c.worse, "metric": c.metric,
               "higher_is_better": c.higher, **verdict(c, rows)} for c in table.claims]
    machines = [r["machine"] for found in by_row.values() for r in found.values()]
    return {"table": table.number, "title": table.title, "note": table.note, "columns": list(table.columns),
            "rows": list(rows.values()), "claims": claims, "seeds": min(counts),
            "complete": min(counts) >= wanted, "recipe": recipe.settings(),
            "machine": machines[0] if machines else None,
            "seconds": round(sum(r["seconds"] for r in rows.values()), 1)}


def load_table(n: int, folder: Path = DEFAULT_OUT) -> dict[str, Any]:
    """A committed table (``docs/reproduction/table_N.json``)."""
    path = Path(folder) / f"table_{n}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `python -m fftd_course reproduce --table {n}` (hours on a "
                                "CPU; --quick for a one-seed preview)")
    return read_json(path)


def summary(folder: Path = DEFAULT_OUT) -> list[dict[str, Any]]:
    """Every claim of every committed table, in table order: what the README's summary shows."""
    found = []
    for n in TABLES:
        if (Path(folder) / f"table_{n}.json").is_file():
            t = load_table(n, folder)
            found += [{"table": n, "complete": t.get("complete", True), **c} for c in t["claims"]]
    return found
