"""The Airflow UI of the compose stack in a real browser: headless Chromium (Debian's, driven by Playwright)
logs in, triggers helical_finetune from its validated form, follows the run to success and reads the
runner's progress in the finetune task's log; a data URL that breaks the form's pattern never becomes a run.
Screenshots go to build/stack/ (artifacts of the test run)."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest

from conftest import ARTIFACTS, wait_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from chromium import launch  # noqa: E402

pytestmark = pytest.mark.slow

PROGRESS = re.compile(r"epoch \d+/\d+ chunk \d+: \d+ cells, loss [0-9.]+")  # helical_runner/training/loop.py


@pytest.fixture(scope="module")
def page(stack):
    """Chromium, logged in to the stack's Airflow UI as its admin."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        try:
            log_in(page, stack)
            yield page
        finally:
            browser.close()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def log_in(page, stack) -> None:
    user, password = stack.login
    page.goto(stack.airflow)
    page.locator("input[name=username]").fill(user)
    page.locator("input[type=password]").fill(password)
    shot(page, "01-login")
    page.locator("input[type=password]").press("Enter")
    page.wait_for_url(re.compile(r"^(?!.*/login).*$"))


def open_trigger_form(page, stack):
    """The DAG's page, then its Trigger button: the dialog with the run parameters' form."""
    page.goto(f"{stack.airflow}/dags/helical_finetune")
    page.get_by_role("button", name="Trigger Dag").click()
    dialog = page.get_by_role("dialog")
    dialog.locator("input[name=element_data]").wait_for()
    return dialog


def fill(dialog, data_url: str, label_column: str = "cell_type") -> None:
    dialog.locator("input[name=element_data]").fill(data_url)
    dialog.locator("input[name=element_label_column]").fill(label_column)


def test_a_data_url_breaking_the_pattern_is_refused_before_any_run_exists(stack, page):
    """Airflow 3.3's form sends the conf as typed; the server checks it against the Params' schema and
    answers 400, which the form shows, staying open. No run is created."""
    before = stack.get("/api/v2/dags/helical_finetune/dagRuns", limit=100)["total_entries"]
    dialog = open_trigger_form(page, stack)
    fill(dialog, "http://example.com/cells.h5ad")  # neither s3://bucket/key nor /data/...: the Param's pattern
    with page.expect_response(lambda r: r.request.method == "POST" and
                              r.url.endswith("/api/v2/dags/helical_finetune/dagRuns")) as refused:
        dialog.get_by_role("button", name="Trigger", exact=True).click()
    assert refused.value.status == 400, refused.value.text()
    assert "does not match" in refused.value.text()  # the schema's own reason: the pattern
    page.get_by_text("Failed to Trigger Dag").wait_for()
    shot(page, "03-bad-data-url")
    assert dialog.is_visible()
    assert stack.get("/api/v2/dags/helical_finetune/dagRuns", limit=100)["total_entries"] == before


def test_browser_triggers_a_run_and_reads_the_runners_progress(stack, data_dir, cells, page):
    key = f"uploads/browser-{int(time.time())}.h5ad"  # outside incoming/: only the form starts its run
    stack.aws("s3", "cp", str(cells), f"s3://{stack.bucket}/{key}")
    dialog = open_trigger_form(page, stack)
    fill(dialog, f"s3://{stack.bucket}/{key}")
    shot(page, "04-trigger-form")
    with page.expect_response(lambda r: r.request.method == "POST" and
                              r.url.endswith("/api/v2/dags/helical_finetune/dagRuns")) as created:
        dialog.get_by_role("button", name="Trigger", exact=True).click()
    assert created.value.status == 200, created.value.text()
    run = created.value.json()
    run_id = run["dag_run_id"]
    assert run["conf"]["data"] == f"s3://{stack.bucket}/{key}" and run["conf"]["label_column"] == "cell_type"
    assert run["conf"].get("epochs") is None  # optional fields left empty stay empty

    stack.wait_for_run("helical_finetune", run_id, timeout=900)
    page.goto(f"{stack.airflow}/dags/helical_finetune/runs/{run_id}")
    page.get_by_text(re.compile(r"^success$", re.I)).first.wait_for()
    shot(page, "05-run-success")
    assert stack.get(f"/api/v2/dags/helical_finetune/dagRuns/{run_id}")["state"] == "success"

    page.goto(f"{stack.airflow}/dags/helical_finetune/runs/{run_id}/tasks/on_cpu.finetune")
    wait_for(lambda: PROGRESS.search(page.inner_text("body")), 120, "the runner's progress lines in the task log",
             interval=3)
    shot(page, "06-finetune-log")
    text = page.inner_text("body")
    assert "helical-runner finetune" in text  # the operator's own line, with the runner's after it
    assert len(PROGRESS.findall(text)) >= 1
