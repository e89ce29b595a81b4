"""Delete the Pushgateway groups of runner runs that are over (the Pushgateway has no TTL).

Each runner step pushes its own group {job="helical_runner", run_id, command} (helical_runner/outputs/metrics.py) and
its last push says status succeeded or failed. Left alone, those groups are exported forever: a finished run
would look current and a killed runner would say "running" for ever. This script deletes
  - groups whose status is succeeded/failed and whose last push is older than KEEP_FINISHED_SECONDS
    (default 600: Prometheus has long scraped the final state, and keeps its history for the dashboards);
  - groups still saying running with no push for STALE_RUNNING_SECONDS (default 21600: the runner died
    without a final push; HelicalRunnerStalled has been firing since 2 minutes after its last push);
  - with --run-id, every group of that run at once (what a DAG's last task can call).
Standard library only: it runs in any Python 3.9+ image (docker-compose-monitoring.yaml) or on a laptop.

  python pushgateway_janitor.py [--url http://pushgateway:9091] [--loop SECONDS] [--run-id RUN] [--dry-run]
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import sys
import time
import urllib.parse
import urllib.request

JOB = "helical_runner"
ALIVE_FILE = "/tmp/janitor.alive"
log = logging.getLogger("pushgateway-janitor")


def groups(url: str) -> list[dict]:
    """The runner groups on the gateway: labels, status (running/succeeded/failed/None), push time."""
    with urllib.request.urlopen(f"{url}/api/v1/metrics", timeout=10) as response:
        data = json.load(response)["data"]
    found = []
    for group in data:
        labels = group.get("labels", {})
        if labels.get("job") != JOB:
            continue
        status = None
        for metric in group.get("helical_runner_status", {}).get("metrics", []):
            if float(metric["value"]) == 1:
                status = metric["labels"].get("status")
        pushed = group.get("push_time_seconds", {}).get("metrics", [{}])[0].get("value")
        found.append({"labels": labels, "status": status, "push_time": float(pushed) if pushed else None})
    return found


def group_path(labels: dict) -> str:
    """/metrics/job/<job>/<label>@base64/<value>...: base64 so any value (even with '/') is safe."""
    parts = [f"job/{urllib.parse.quote(labels['job'], safe='')}"]
    for key in sorted(k for k in labels if k != "job"):
        value = base64.urlsafe_b64encode(labels[key].encode()).decode() or "="
        parts.append(f"{key}@base64/{value}")
    return "/metrics/" + "/".join(parts)


def delete(url: str, labels: dict) -> None:
    request = urllib.request.Request(url + group_path(labels), method="DELETE")
    with urllib.request.urlopen(request, timeout=10):
        pass


def expired(group: dict, now: float, keep_finished: float, stale_running: float) -> str | None:
    """Why this group should go, or None to keep it."""
    if group["push_time"] is None:
        return None
    age = now - group["push_time"]
    if group["status"] in ("succeeded", "failed") and age > keep_finished:
        return f"{group['status']} {age:.0f}s ago"
    if group["status"] in ("running", None) and age > stale_running:
        return f"no push for {age:.0f}s while {group['status'] or 'without status'}"
    return None


def sweep(url: str, keep_finished: float, stale_running: float, run_id: str | None = None,
          dry_run: bool = False, now: float | None = None) -> list[dict]:
    """Delete what is over (or every group of run_id); return the groups deleted."""
    now = time.time() if now is None else now
    deleted = []
    for group in groups(url):
        if run_id is not None:
            reason = "requested" if group["labels"].get("run_id") == run_id else None
        else:
            reason = expired(group, now, keep_finished, stale_running)
        if reason is None:
            continue
        log.info("%s group %s (%s)", "would delete" if dry_run else "deleting", group["labels"], reason)
        if not dry_run:
            delete(url, group["labels"])
        deleted.append(group)
    return deleted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("PUSHGATEWAY_URL", "http://pushgateway:9091"))
    parser.add_argument("--keep-finished", type=float, default=float(os.environ.get("KEEP_FINISHED_SECONDS", 600)),
                        help="seconds a finished run's group stays (default 600)")
    parser.add_argument("--stale-running", type=float,
                        default=float(os.environ.get("STALE_RUNNING_SECONDS", 21600)),
                        help="seconds without a push after which a 'running' group goes (default 21600)")
    parser.add_argument("--run-id", help="delete every group of this run now")
    parser.add_argument("--loop", type=float, help="sweep every this many seconds, for ever")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    url = args.url.rstrip("/")
    while True:
        try:
            sweep(url, args.keep_finished, args.stale_running, args.run_id, args.dry_run)
            if args.loop:
                with open(ALIVE_FILE, "w"):
                    pass
        except OSError as exc:  # gateway restarting: try again next round
            log.warning("could not sweep %s: %s", url, exc)
            if not args.loop:
                return 69
        if not args.loop:
            return 0
        time.sleep(args.loop)


if __name__ == "__main__":
    sys.exit(main())
