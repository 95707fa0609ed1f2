"""The paper's tables re-run at toy scale, with seeds and error bars (chapter 11).

``python -m fftd_course reproduce --table N [--seeds 3] [--quick] [--jobs 2]`` runs Table N's experiments on the
toy faces (:mod:`.tables`), caching every model, sample set and (table, row, seed) result under
``runs/reproduction/`` (:mod:`.store`) so a stopped run resumes, and writes ``docs/reproduction/table_N.json``
(:mod:`.runner`). :mod:`.experiments` trains and measures; :mod:`.recipe` holds the settings.
"""

from .recipe import FULL, QUICK, Recipe, machine
from .runner import DEFAULT_CACHE, DEFAULT_OUT, aggregate, jobs_for, load_table, run, run_job, summary, verdict
from .report import claims_text, format_table, plot_table, summary_markdown
from .tables import TABLES, Claim, Row, Table

__all__ = ["FULL", "QUICK", "Recipe", "machine", "TABLES", "Table", "Row", "Claim", "run", "run_job", "jobs_for",
           "aggregate", "verdict", "summary", "load_table", "DEFAULT_CACHE", "DEFAULT_OUT", "format_table", "plot_table", "claims_text",
           "summary_markdown"]
