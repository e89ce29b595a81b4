"""The last thing every step that writes a report does: report.html, then report.json, and the same pages
and pictures as artifacts of the step's MLflow run (helical_runner.tracking), with its final figures."""

from __future__ import annotations

import json

from helical_runner.data.storage import Location
from helical_runner.outputs import report_html
from helical_runner.outputs.report import REPORT_NAME, write_json

# report.json figures logged as the MLflow run's final metrics, when the report has them
FINAL_METRICS = {"accuracy": ("accuracy",), "macro_f1": ("macro_f1",),
                 "cells_per_second": ("cells_per_second",), "train_cells_per_second": ("throughput", "cells_per_second"),
                 "cells": ("cells", "predicted"), "cells_embedded": ("cells", "embedded"),
                 "clusters": ("clusters", "clusters")}


def _figure(report: dict, path: tuple[str, ...]):
    value = report
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def publish_report(output: Location, report: dict, figures: dict[str, bytes], tracking) -> dict:
    """Log the report's final figures and the data's ETag, wait for the tracking queue (report["tracking"]
    says what MLflow holds, or what it missed), then write report.html and report.json (last: a finished
    report.json means a finished step) and queue both, with `figures` ({name: PNG}), as run artifacts."""
    data = (report.get("inputs") or {}).get("data") or {}
    tracking.log_params({"data_etag": data.get("etag"), "data_cells": data.get("cells")})
    tracking.log_metrics({name: _figure(report, path) for name, path in FINAL_METRICS.items()},
                         step=int(report.get("steps") or 0))
    report["tracking"] = tracking.summary()
    html = report_html.render(report, figures).encode()
    report_html.put(output, html)
    write_json(output, REPORT_NAME, report)
    for name, picture in figures.items():
        tracking.log_bytes(name, picture)
    tracking.log_bytes(report_html.HTML_NAME, html)
    tracking.log_bytes(REPORT_NAME, json.dumps(report, indent=1, default=str).encode())
    return report
