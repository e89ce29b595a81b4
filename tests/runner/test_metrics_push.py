"""The runner pushes live metrics to a real Pushgateway (Debian's prometheus-pushgateway) during the
run and its final status at the end, success or failure, in a group of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request

import pytest

from conftest import BUCKET, free_port, http_get as _get, run_cli, wait_for

pytestmark = pytest.mark.slow


def samples(gateway: str, run_id: str) -> dict[str, float]:
    """name{labels} -> value for the series of one run (labels in the gateway's own order)."""
    found = {}
    for line in (_get(gateway + "/metrics") or "").splitlines():
        if line.startswith("helical_runner_") and f'run_id="{run_id}"' in line:
            series, value = line.rsplit(" ", 1)
            name = series.split("{", 1)[0]
            status = series.split('status="', 1)[1].split('"', 1)[0] if 'status="' in series else None
            found[f"{name}:{status}" if status else name] = float(value)
    return found


def test_finetune_pushes_progress_and_final_status(pushgateway, s3, tiny_model, cells_h5ad):
    s3.upload_file(str(cells_h5ad), BUCKET, "incoming/metrics.h5ad")
    env = {"PUSHGATEWAY_URL": pushgateway, "PUSH_INTERVAL_SECONDS": "1"}
    child = subprocess.Popen([sys.executable, "-m", "helical_runner", "finetune", "--data",
                              f"s3://{BUCKET}/incoming/metrics.h5ad", "--label-column", "cell_type", "--output",
                              f"s3://{BUCKET}/runs/metrics-run", "--precision", "fp32", "--cells-per-chunk", "300",
                              "--batch-size", "16", "--epochs", "2", "--lr", "2e-3"],
                             env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    def pushed_while_running():
        found = samples(pushgateway, "metrics-run")
        if found.get("helical_runner_status:running") == 1 and found.get("helical_runner_cells_processed", 0) > 0:
            return found
        assert child.poll() is None, f"runner exited early ({child.returncode}): {child.stderr.read()[-2000:]}"
        return None

    live = wait_for(pushed_while_running, timeout=600, interval=0.5)
    assert live["helical_runner_chunks_total"] == 6  # 3 chunks x 2 epochs
    assert child.wait(timeout=600) == 0, child.stderr.read()
    final = samples(pushgateway, "metrics-run")
    assert final["helical_runner_status:succeeded"] == 1 and final["helical_runner_status:running"] == 0
    assert final["helical_runner_chunks_done"] == final["helical_runner_chunks_total"] == 6
    assert final["helical_runner_cells_processed"] > 0 and final["helical_runner_validation_accuracy"] > 0.5
    assert final["helical_runner_peak_rss_bytes"] > 50e6 and final["helical_runner_duration_seconds"] > 0
    assert final["helical_runner_memory_limit_bytes"] == 8 * 1024**3  # the default profile's cap


def test_failed_run_pushes_failed_status_in_its_own_group(pushgateway, s3, tiny_model):
    s3.put_object(Bucket=BUCKET, Key="incoming/broken.h5ad", Body=b"not an h5ad")
    result = run_cli("chunk", "--input", f"s3://{BUCKET}/incoming/broken.h5ad", "--output",
                     f"s3://{BUCKET}/chunks/broken", "--run-id", "broken-run",
                     env={"PUSHGATEWAY_URL": pushgateway, "PUSH_INTERVAL_SECONDS": "1", "HELICAL_HOST": "gpu-a100-1"})
    assert result.returncode == 65
    final = samples(pushgateway, "broken-run")
    assert final["helical_runner_status:failed"] == 1 and final["helical_runner_status:running"] == 0
    text = _get(pushgateway + "/metrics")
    assert 'command="chunk"' in text and 'job="helical_runner"' in text
    # the worker host it ran on (the DAGs pass HELICAL_WORKER_NAME as HELICAL_HOST): dashboards filter by it
    [info] = [line for line in text.splitlines() if line.startswith("helical_runner_info{") and "broken-run" in line]
    assert 'host="gpu-a100-1"' in info, info


def test_unreachable_pushgateway_never_fails_the_run(s3, tiny_model, cells_h5ad):
    s3.upload_file(str(cells_h5ad), BUCKET, "incoming/nogw.h5ad")
    result = run_cli("chunk", "--input", f"s3://{BUCKET}/incoming/nogw.h5ad", "--output", f"s3://{BUCKET}/chunks/nogw",
                     env={"PUSHGATEWAY_URL": f"http://127.0.0.1:{free_port()}"})
    assert result.returncode == 0, result.stderr
    assert "could not push metrics" in result.stderr
