"""report.html: one self-contained page per run, written beside report.json.

Everything is inline (styles, and the pictures as data: URIs), so the page opens from S3, a laptop or an
e-mail attachment with no network. Sections: summary, inputs and what the runner chose for them,
training curves, confusion matrix, per-class table, UMAP, throughput, memory, outputs. Every value that
comes from users (paths, labels, column names, run ids) goes through `html.escape`.
"""

from __future__ import annotations

import base64
import json
from html import escape

from helical_runner.data import storage
from helical_runner.data.storage import Location

HTML_NAME = "report.html"

_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1100px;padding:16px 24px;color:#222}
h1{font-size:22px;margin:8px 0}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #ddd;padding:3px 9px;text-align:left;vertical-align:top}
th{background:#f4f6f8}td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;height:auto;border:1px solid #eee}.status-succeeded{color:#1a7f37}.status-failed{color:#c62828}
.muted{color:#777}code{background:#f4f6f8;padding:0 3px}
"""


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return str(value)


def _bytes(value) -> str:
    if not value:
        return "n/a"
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    size, unit = float(value), 0
    while size >= 1024 and unit < len(units) - 1:
        size, unit = size / 1024, unit + 1
    return f"{size:.1f} {units[unit]}"


def _rows(pairs) -> str:
    body = "".join(f"<tr><th>{escape(str(k))}</th><td>{escape(_fmt(v))}</td></tr>" for k, v in pairs
                   if v not in (None, "", [], {}))
    return f"<table>{body}</table>" if body else '<p class="muted">nothing recorded</p>'


def _figure(figures: dict[str, bytes], name: str, alt: str) -> str:
    data = figures.get(name)
    if not data:
        return f'<p class="muted">no {escape(alt.lower())} for this run</p>'
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    return f'<img src="{uri}" alt="{escape(alt)}">'


def class_table(metrics: dict | None) -> str:
    """The per-class table (id "per-class") from report.class_metrics' result."""
    if not metrics or not metrics.get("per_class"):
        return '<p class="muted">no labelled cells to score</p>'
    head = "<tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>"
    body = "".join(
        f'<tr><td>{escape(row["class"])}</td><td class="num">{row["precision"]:.3f}</td>'
        f'<td class="num">{row["recall"]:.3f}</td><td class="num">{row["f1"]:.3f}</td>'
        f'<td class="num">{row["support"]:,}</td></tr>' for row in metrics["per_class"])
    foot = (f'<tr><th>macro average</th><td></td><td></td><td class="num">{metrics["macro_f1"]:.3f}</td>'
            f'<td class="num">{metrics["cells"]:,}</td></tr>')
    return f'<table id="per-class">{head}{body}{foot}</table>'


def render(report: dict, figures: dict[str, bytes]) -> str:
    """The page for one finetune, predict or embed report (report.json's dict) and its pictures {file name: PNG}."""
    command, status = report.get("command", "run"), report.get("status", "unknown")
    inputs = report.get("inputs") or {}
    data = inputs.get("data") or {}
    model = inputs.get("model")
    config = report.get("config") or {}
    profile = report.get("profile") or {}
    metrics = report.get("class_metrics")
    split = "validation" if command == "finetune" else "prediction"
    throughput = report.get("throughput") or {}
    memory = report.get("peak_memory") or {}
    durations = report.get("durations") or {}
    cells = report.get("cells") or {}

    summary = _rows([
        ("command", command), ("status", status), ("run id", report.get("run_id")),
        ("cells", cells.get("total") or cells.get("predicted") or cells.get("embedded")),
        ("Leiden clusters", (report.get("clusters") or {}).get("clusters")),
        ("steps", report.get("steps")), ("epochs", report.get("epochs")),
        (f"{split} accuracy", report.get("accuracy")), (f"{split} macro-F1", (metrics or {}).get("macro_f1")),
        ("duration (s)", durations.get("total_seconds")),
    ])
    tracking = report.get("tracking") or {}
    registered = tracking.get("registered_model") or {}
    summary += _rows([
        ("MLflow run", tracking.get("url") or tracking.get("status")),
        ("registered model", registered.get("uri")), ("champion", registered.get("reason")),
        ("model used", ((report.get("model") or {}).get("registered") or {}).get("uri")),
        ("not in MLflow", ", ".join(tracking.get("not_logged") or [])),
    ])
    chosen = _rows([
        ("data", data.get("url")), ("data ETag", data.get("etag")), ("data size", _bytes(data.get("size"))),
        ("cells in the data", data.get("cells")), ("chunks", data.get("chunks")),
        ("model", model.get("name") if isinstance(model, dict) else model),
        ("base model", (report.get("model") or {}).get("base_model")),
        ("label column", report.get("label_column") or (report.get("model") or {}).get("label_column")),
        ("classes", len(report.get("labels") or (report.get("model") or {}).get("labels") or []) or None),
        ("profile", profile.get("name") if isinstance(profile, dict) else profile),
        ("device", report.get("device")), ("precision", report.get("precision")),
        ("batch size (cells)", config.get("batch_size") or report.get("batch_size")),
        ("tokens per batch", config.get("tokens_per_batch")), ("peak learning rate", config.get("lr")),
        ("epochs asked", config.get("epochs")), ("frozen layers", config.get("freeze_layers")),
        ("validation fraction", config.get("val_fraction")),
        ("tokens per cell (max)", profile.get("max_input_size") if isinstance(profile, dict) else None),
        ("cells per chunk", profile.get("cells_per_chunk") if isinstance(profile, dict) else None),
        ("data-parallel processes", report.get("data_parallel_processes")),
        ("resumed from", report.get("resumed_from")), ("embeddings", report.get("embeddings")),
    ])
    cell_rows = _rows([(f"cells {k.replace('_', ' ')}", v) for k, v in cells.items()])
    speed = _rows([
        ("cells / s (training)", throughput.get("cells_per_second")),
        ("cells / s (embedding)" if command == "embed" else "cells / s (prediction)", report.get("cells_per_second")),
        ("time waiting for data", throughput.get("data_wait_fraction")),
        ("padding efficiency", throughput.get("padding_efficiency")),
        *((f"{k.replace('_', ' ')}", v) for k, v in durations.items()),
    ])
    mem = _rows([
        ("peak RSS", _bytes(memory.get("rss_bytes"))),
        ("CUDA allocated (peak)", _bytes(memory.get("cuda_allocated_bytes"))),
        ("CUDA reserved (peak)", _bytes(memory.get("cuda_reserved_bytes"))),
        ("memory limit (profile)", profile.get("memory_limit") if isinstance(profile, dict) else None),
    ])
    outputs = report.get("outputs") or {}
    output_rows = _rows([(k, ", ".join(v) if isinstance(v, list) else v) for k, v in outputs.items()])
    umap_note = report.get("umap") or {}
    title = f"helical-runner {command} · {report.get('run_id', '')}"
    sections = [
        f'<h1>{escape(title)}</h1><p class="status-{escape(status)}">{escape(status)}</p>',
        f"<h2>Summary</h2>{summary}{cell_rows}",
        f"<h2>Inputs and what the runner chose</h2>{chosen}",
    ]
    if command == "finetune":
        sections.append(f"<h2>Training curves</h2>{_figure(figures, 'training_curves.png', 'Training curves')}")
    if command != "embed":  # embed has no labels to score
        sections += [
            f"<h2>Confusion matrix ({split})</h2>{_figure(figures, 'confusion_matrix.png', 'Confusion matrix')}",
            f"<h2>Per-class metrics ({split})</h2>{class_table(metrics)}",
        ]
    if command in ("predict", "embed"):
        drawn = f'<p class="muted">{umap_note.get("cells", 0):,} of {umap_note.get("of", 0):,} cells</p>' \
            if umap_note else ""
        sections.append(f"<h2>UMAP of the cell embeddings</h2>{_figure(figures, 'umap.png', 'UMAP')}{drawn}")
    sections += [f"<h2>Throughput</h2>{speed}", f"<h2>Memory</h2>{mem}", f"<h2>Outputs</h2>{output_rows}",
                 f"<h2>Versions</h2>{_rows((report.get('versions') or {}).items())}"]
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_STYLE}</style></head>'
            f'<body>{"".join(sections)}</body></html>')


def publish(output: Location, report: dict, figures: dict[str, bytes]) -> Location:
    """Render the page and upload it as report.html under `output`; returns its location."""
    return put(output, render(report, figures).encode())


def put(output: Location, html: bytes) -> Location:
    loc = output.join(HTML_NAME)
    storage.put_bytes(loc, html, "text/html; charset=utf-8")
    return loc
