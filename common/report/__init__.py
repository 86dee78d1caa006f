"""report.html: a run seen in the browser (common.report.build)."""
