"""Prometheus scrape targets for the worker hosts, from .env instead of hand edits to prometheus.yml.

HELICAL_WORKER_HOSTS lists the hosts as NAME=ADDRESS pairs, comma-separated (e.g.
`gpu-a100-1=10.0.0.12,gpu-a100-2=10.0.0.13`); each host's cAdvisor answers on WORKER_CADVISOR_PORT (8081)
and its node-exporter on WORKER_NODE_EXPORTER_PORT (9100), as docker-compose-worker.yaml publishes them.
Writes workers-cadvisor.json and workers-node.json (Prometheus file_sd format, every target labelled
host=NAME) into the folder given, atomically, so Prometheus never reads half a file. Standard library only:
it runs on the janitor image. A bad entry stops it with one line naming the entry; an empty list writes
empty target lists (a stack without worker hosts)."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import sys
from pathlib import Path

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


class BadHosts(ValueError):
    pass


def parse_hosts(text: str) -> list[tuple[str, str]]:
    """[(name, address)] from `NAME=ADDRESS,...`; raises BadHosts naming the first bad entry."""
    hosts, seen = [], set()
    for entry in filter(None, (e.strip() for e in text.split(","))):
        name, sep, address = (part.strip() for part in entry.partition("="))
        if not sep or not NAME.match(name):
            raise BadHosts(f"HELICAL_WORKER_HOSTS entry {entry!r}: expected NAME=ADDRESS (name: letters, digits, "
                           "'.', '_', '-')")
        try:
            ipaddress.ip_address(address)
        except ValueError:
            if not HOSTNAME.match(address):
                raise BadHosts(f"HELICAL_WORKER_HOSTS entry {entry!r}: {address!r} is not an IP address or a "
                               "host name") from None
        if name in seen:
            raise BadHosts(f"HELICAL_WORKER_HOSTS entry {entry!r}: host {name!r} is listed twice")
        seen.add(name)
        hosts.append((name, address))
    return hosts


def target(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def write_targets(folder: Path, hosts: list[tuple[str, str]], cadvisor_port: int, node_port: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for job, port in (("cadvisor", cadvisor_port), ("node", node_port)):
        groups = [{"targets": [target(address, port)], "labels": {"host": name}} for name, address in hosts]
        path = folder / f"workers-{job}.json"
        partial = path.with_suffix(".json.tmp")
        partial.write_text(json.dumps(groups, indent=1) + "\n")
        partial.replace(path)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: worker_targets.py FOLDER", file=sys.stderr)
        return 2
    try:
        hosts = parse_hosts(os.environ.get("HELICAL_WORKER_HOSTS", ""))
        ports = [int(os.environ.get(k) or d) for k, d in (("WORKER_CADVISOR_PORT", 8081),
                                                            ("WORKER_NODE_EXPORTER_PORT", 9100))]
    except (BadHosts, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    write_targets(Path(argv[0]), hosts, *ports)
    print(f"worker hosts scraped: {', '.join(f'{n} ({a})' for n, a in hosts) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
