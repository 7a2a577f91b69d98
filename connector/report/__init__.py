"""report: JSON for machines and a one-line summary for the log."""
