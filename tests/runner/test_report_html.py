"""report.html keeps users' strings as text: labels, paths and run ids can't inject markup."""

from __future__ import annotations

from helical_runner.outputs.report_html import render


def test_user_strings_are_escaped_and_the_page_is_self_contained():
    hostile = '<img src=x onerror="alert(1)">'
    report = {"command": "predict", "status": "succeeded", "run_id": 'run "1" <b>',
              "inputs": {"data": {"url": "s3://helical/incoming/<script>alert(2)</script>.h5ad"}},
              "model": {"label_column": "cell & type", "labels": [hostile, "T cell"]},
              "class_metrics": {"cells": 3, "accuracy": 2 / 3, "macro_f1": 0.5, "per_class": [
                  {"class": hostile, "precision": 1.0, "recall": 0.5, "f1": 0.667, "support": 2},
                  {"class": "T cell", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}]}}
    page = render(report, {"umap.png": b"\x89PNG fake"})
    assert "<script>" not in page and hostile not in page and "<b>" not in page
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page and "cell &amp; type" in page
    assert page.count("<img ") == 1 and 'src="data:image/png;base64,' in page  # the one picture given, inline
