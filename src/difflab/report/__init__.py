"""Reports of the comparison: the table and its honest reading (``analysis``: paired differences
per NFE budget, the frontier, the schedule matrix, solver families), figures (``plots``), the
self-contained local HTML (``html``), the W&B comparison run and Report (``wandb_report``), and
``build`` which turns the evaluate stage's records into ``results/``."""

from difflab.report.analysis import (
    COLUMNS,
    PAIRED_COLUMNS,
    Pairing,
    budget_summary,
    build_table,
    default_budgets,
    invariance_sentence,
    nested_metrics,
    paired_rows,
    paired_to_csv,
    pareto_frontier,
    plausible_frontier,
    read_csv,
    row_id,
    schedule_matrix,
    solver_families,
    summary_sentences,
    tie_counts,
    to_csv,
)

__all__ = [
    "COLUMNS",
    "PAIRED_COLUMNS",
    "Pairing",
    "budget_summary",
    "build_table",
    "default_budgets",
    "invariance_sentence",
    "nested_metrics",
    "paired_rows",
    "paired_to_csv",
    "pareto_frontier",
    "plausible_frontier",
    "read_csv",
    "row_id",
    "schedule_matrix",
    "solver_families",
    "summary_sentences",
    "tie_counts",
    "to_csv",
]
