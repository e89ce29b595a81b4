"""report.html as people see it: Chromium renders every figure from the page alone (no network), and the
per-class table names the run's classes."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow  # runs the runner CLI twice before the browser opens anything

FIGURES = {"finetune": {"Training curves", "Confusion matrix"}, "predict": {"Confusion matrix", "UMAP"}}


@pytest.mark.parametrize("command", ["finetune", "predict"])
def test_report_page_renders_every_figure_and_the_class_table(browser, run_reports, command, tmp_path):
    page = browser.new_page()
    requested = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto((run_reports[command] / "report.html").as_uri())
    page.wait_for_load_state("load")

    images = page.eval_on_selector_all(
        "img", "imgs => imgs.map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth}))")
    assert {i["alt"] for i in images} == FIGURES[command]
    assert all(i["complete"] and i["width"] > 0 for i in images), images  # every picture decoded and drawn
    classes = page.eval_on_selector_all("#per-class tr td:first-child", "cells => cells.map(c => c.textContent)")
    assert sorted(classes) == run_reports["classes"]
    assert page.locator("#per-class").inner_text().count("macro average") == 1
    assert all(url.startswith(("file:", "data:")) for url in requested), requested  # self-contained
    page.screenshot(path=str(tmp_path / f"{command}-report.png"), full_page=True)
    page.close()
