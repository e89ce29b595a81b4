"""MLflow's own UI, as a person opens it from a report page or a task log: the fine-tune's run page (its
parameters and loss curve) and the registered model's page (its version and the champion alias). Headless
Chromium renders them; the screenshots land in build/screenshots/ for a person to look at."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SHOTS = Path(__file__).resolve().parents[2] / "build" / "screenshots"


def _open(browser, url: str, *texts: str, shot: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    requested = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(url)
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        for text in texts:
            # generous: make test runs this suite beside the Docker suites, and MLflow's React UI renders a
            # run's charts only after it has fetched every metric's history
            page.get_by_text(text, exact=True).first.wait_for(timeout=150_000)
    except Exception:
        page.screenshot(path=str(SHOTS / f"timed-out-{shot}"), full_page=True)  # what the page showed instead
        raise
    page.screenshot(path=str(SHOTS / shot), full_page=True)
    body = page.inner_text("body")
    page.close()
    origin = url.split("/#")[0]
    assert all(u.startswith((origin, "data:", "blob:")) for u in requested), \
        [u for u in requested if not u.startswith((origin, "data:", "blob:"))]  # nothing leaves the server
    return body


def test_the_finetune_run_and_its_registered_champion_open_in_mlflow_ui(browser, run_reports, mlflow):
    tracked = run_reports["finetune_report"]["tracking"]
    assert tracked["url"].startswith(mlflow.uri)  # the link report.html and the task log give
    run_page = _open(browser, tracked["url"], "label_column", shot="mlflow-run.png")
    assert "cell_type" in run_page and "helical_finetune" in run_page

    metrics_page = _open(browser, f"{tracked['url']}/model-metrics", "loss", shot="mlflow-run-metrics.png")
    assert "validation_macro_f1" in metrics_page

    model_page = _open(browser, f"{mlflow.uri}/#/models/helical-cell_type", "Version 1",
                       shot="mlflow-registered-model.png")
    assert "champion" in model_page and "macro_f1" in model_page  # the alias and the version's tags
