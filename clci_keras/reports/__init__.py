"""Reports: the paper's tables (CSV/Markdown/LaTeX) and figures."""
from clci_keras.reports.tables import TABLE1, TABLE2, build_table, collect_runs, write_tables

__all__ = ["TABLE1", "TABLE2", "build_table", "collect_runs", "write_tables"]
