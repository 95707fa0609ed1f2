"""Tables, plots and the README summary from the committed results (``docs/reproduction/table_N.json``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["format_table", "plot_table", "claims_text", "summary_markdown", "update_readme", "LABELS"]

# how each measure is named in tables and plots (lower is better unless marked)
LABELS = {
    "l1": "L1", "lpips": "LPIPS", "rfid": "rec. FID", "rkid": "rec. KID", "codes_used": "codes used (higher=more)",
    "perplexity": "perplexity", "parameters": "parameters", "train_images_per_second": "train img/s",
    "fid": "FID", "kid": "KID", "accuracy": "class accuracy (higher=better)", "ms_per_image": "ms / image",
    "cat.kid": "KID cat", "dog.kid": "KID dog", "wild.kid": "KID wild",
}


def _number(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 0.1:
        return f"{value:.3f}"
    return f"{value:.4f}"


def cell(row: dict[str, Any], key: str) -> str:
    """``mean ± std`` over seeds of one measure of one row (``-`` when not measured)."""
    if key not in row["mean"]:
        return "-"
    mean, std = row["mean"][key], row["std"][key]
    return _number(mean) if std == 0 else f"{_number(mean)} ± {_number(std)}"


def format_table(table: dict[str, Any], columns: list[str] | None = None) -> str:
    """A Markdown table of a committed table: one line per row, ``mean ± std`` over seeds per measure."""
    columns = columns or table["columns"]
    head = "| row | " + " | ".join(LABELS.get(c, c) for c in columns) + " |"
    lines = [head, "|" + "---|" * (len(columns) + 1)]
    lines += ["| " + r["label"] + " | " + " | ".join(cell(r, c) for c in columns) + " |" for r in table["rows"]]
    return "\n".join(lines)


def claims_text(table: dict[str, Any]) -> str:
    """One line per claim of the paper's table: our verdict, the difference and its standard error."""
    out = []
    if not table.get("complete", True):
        counts = ", ".join(f"{r['id']} {len(r['seeds'])}" for r in table["rows"])
        out.append(f"- **still being computed** (seeds per row: {counts}); the verdicts below use what is there")
    for c in table["claims"]:
        if c["verdict"] in ("not measured", "one seed"):
            out.append(f"- {c['claim']}: {c['verdict']}" + ("" if c["verdict"] == "not measured" else
                       f" (difference {_number(c['difference'])} in the paper's direction; no error bar yet)"))
            continue
        out.append(f"- {c['claim']}: **{c['verdict']}** (difference {_number(c['difference'])}, "
                   f"standard error {_number(c['standard_error'])}, {table['seeds']} seeds)")
    return "\n".join(out)


def plot_table(table: dict[str, Any], metric: str = "kid", ax=None, paper_key: str | None = "fid_afhq"):
    """Our ``metric`` per row (mean, error bar = std over seeds, dots = the seeds) beside the paper's value."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 2.8))
    rows = [r for r in table["rows"] if metric in r["mean"]]
    if not rows:
        ax.text(0.5, 0.5, "not computed yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return ax
    xs = range(len(rows))
    ax.bar(xs, [r["mean"][metric] for r in rows], yerr=[r["std"][metric] for r in rows], capsize=4,
           color="tab:blue", alpha=0.6, label=f"ours ({table['seeds']} seeds)")
    for x, r in zip(xs, rows):
        seeds = [v.get(metric) for v in r["seeds"].values() if v.get(metric) is not None]
        ax.plot([x] * len(seeds), seeds, "k.", ms=4)
    ax.set_xticks(list(xs), [r["label"] for r in rows], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(f"ours: {LABELS.get(metric, metric)}")
    paper = [r["paper"].get(paper_key) if paper_key else None for r in rows]
    if any(p is not None for p in paper):
        twin = ax.twinx()
        twin.plot([x for x, p in zip(xs, paper) if p is not None], [p for p in paper if p is not None], "r^",
                  ms=8, label="paper")
        twin.set_ylabel(f"paper: {paper_key.replace('_', ' ')}", color="tab:red")
        twin.set_ylim(bottom=0)
    ax.set_title(f"Table {table['number'] if 'number' in table else table['table']}: {LABELS.get(metric, metric)}",
                 fontsize=9)
    return ax


def summary_markdown(claims: list[dict[str, Any]]) -> str:
    """The README's "Does the paper hold up?" table, from :func:`~.runner.summary`."""
    lines = ["| table | the paper claims | our result |", "|---|---|---|"]
    lines += [f"| {c['table']} | {c['claim']} | {c['verdict']}{'' if c.get('complete', True) else ' (incomplete)'} |"
              for c in claims]
    words = ("agrees", "disagrees", "inside the noise", "one seed", "not measured")
    counts = {v: sum(c["verdict"] == v for c in claims) for v in words}
    lines.append("")
    lines.append(f"{len(claims)} claims: {counts['agrees']} agree, {counts['disagrees']} disagree, "
                 f"{counts['inside the noise']} inside the noise; {counts['one seed']} with one seed so far, "
                 f"{counts['not measured']} not measured yet.")
    if any(not c.get("complete", True) for c in claims):
        lines.append("(incomplete): the reproduction has not yet computed every seed of that table; it resumes from "
                     "the committed results (`python -m fftd_course reproduce --table all --seeds 3 --jobs 2`).")
    return "\n".join(lines)


BEGIN, END = "<!-- reproduction:begin -->", "<!-- reproduction:end -->"


def update_readme(readme: Path, claims: list[dict[str, Any]]) -> bool:
    """Rewrite the summary between the README's ``reproduction`` markers; True if the file changed."""
    text = Path(readme).read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{readme} has no {BEGIN} ... {END} block for the summary")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{BEGIN}\n{summary_markdown(claims)}\n{END}{tail}"
    if new != text:
        Path(readme).write_text(new)
    return new != text
