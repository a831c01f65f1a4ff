"""Reports of the comparison: the table and its honest reading (``analysis``), figures (``plots``),
the self-contained local HTML (``html``), the W&B comparison run and Report (``wandb_report``),
and ``build`` which turns the evaluate stage's records into ``results/``."""

from difflab.report.analysis import (
    COLUMNS,
    budget_summary,
    build_table,
    default_budgets,
    nested_metrics,
    pareto_frontier,
    plausible_frontier,
    read_csv,
    solver_error,
    summary_sentences,
    to_csv,
)

__all__ = [
    "COLUMNS",
    "budget_summary",
    "build_table",
    "default_budgets",
    "nested_metrics",
    "pareto_frontier",
    "plausible_frontier",
    "read_csv",
    "solver_error",
    "summary_sentences",
    "to_csv",
]
