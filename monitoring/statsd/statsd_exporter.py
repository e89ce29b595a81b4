"""A stand-in for prometheus/statsd_exporter, which no reachable registry (and no Debian package) ships here.

The local compose stack runs it as the statsd-exporter service (docker/local/statsd-exporter.Dockerfile,
docker-compose-local.yaml) with the compose file's own flags; tests/monitoring feed it Airflow's packets.

It implements the parts of the exporter's documented behaviour that our mapping relies on (README of
github.com/prometheus/statsd_exporter, sections "Tagging Extensions", "Glob matching", "Ordering glob rules",
"Regular expression matching", "StatsD timers and distributions", "drop action", "Explicit metric type
mapping"):
  - a line is `name[,tag=value...]:value|type[|@rate][|#tag:value,...]`; InfluxDB-style tags after commas
    in the name and DogStatsD tags after `|#` become labels;
  - glob rules: `*` stands for one dot-separated component, `$n`/`${n}` in name and labels is the n-th
    wildcard; rules are tried in file order (glob_disable_ordering false) and the first match wins;
  - regex rules run only after every glob rule failed, in order;
  - match_metric_type restricts a rule to counter, gauge or observer (timer/histogram/distribution);
  - mapping labels win over tag labels (honor_labels false);
  - timers (`ms`) are observed in seconds (value / 1000), `h`/`d` unconverted; counters add value / rate;
  - `action: drop` discards; an unmatched metric keeps its name with non-alphanumerics turned into `_`.
`Exporter` keeps the resulting series and renders Prometheus' text format, so a real Prometheus can scrape
what Airflow's packets would become.

  python statsd_exporter.py --statsd.mapping-config=mapping.yml [--statsd.listen-udp=:9125]
                            [--statsd.listen-tcp=:9125] [--web.listen-address=:9102]
(the exporter's own flag names; an empty host means every address).
"""

from __future__ import annotations

import argparse
import math
import re
import socketserver
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

TYPES = {"c": "counter", "g": "gauge", "ms": "observer", "h": "observer", "d": "observer"}
DEFAULT_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
_REF = re.compile(r"\$\{(\d+)\}|\$(\d+)")


@dataclass
class Event:
    name: str
    value: float
    kind: str  # counter | gauge | observer
    statsd_type: str
    tags: dict[str, str]
    relative: bool = False  # a gauge line with an explicit +/- sign


@dataclass
class Mapped:
    name: str
    kind: str
    labels: dict[str, str]
    buckets: list[float] = field(default_factory=lambda: list(DEFAULT_BUCKETS))
    observer_type: str = "histogram"


def escape(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def parse_line(line: str) -> list[Event]:
    """One StatsD line (possibly several values after the name, `a:1|c:2|c`) into events."""
    line = line.strip()
    if not line or ":" not in line:
        return []
    name, rest = line.split(":", 1)
    tags: dict[str, str] = {}
    if "," in name:  # InfluxDB-style
        name, *pairs = name.split(",")
        for pair in pairs:
            if "=" in pair:
                key, value = pair.split("=", 1)
                tags[escape(key)] = value
    events = []
    # several samples may share one name (`a:1|c:2|c`), unless DogStatsD tags (with their `:`) follow
    for sample in ([rest] if "|#" in rest else rest.split(":")):
        parts = sample.split("|")
        if len(parts) < 2:
            continue
        raw, statsd_type = parts[0], parts[1]
        rate = 1.0
        for extra in parts[2:]:
            if extra.startswith("@"):
                rate = float(extra[1:])
            elif extra.startswith("#"):  # DogStatsD
                for pair in extra[1:].split(","):
                    key, _, value = pair.partition(":")
                    tags[escape(key)] = value
        if statsd_type not in TYPES:
            continue
        value = float(raw)
        kind = TYPES[statsd_type]
        if kind == "counter":
            value /= rate
        if statsd_type == "ms":
            value /= 1000.0
        events.append(Event(name, value, kind, statsd_type, dict(tags),
                            relative=(kind == "gauge" and raw[:1] in "+-")))
    return events


class Mapping:
    def __init__(self, path: Path):
        config = yaml.safe_load(Path(path).read_text())
        defaults = config.get("defaults") or {}
        if defaults.get("glob_disable_ordering"):
            raise NotImplementedError("this stand-in only implements ordered glob matching")
        self.default_observer = defaults.get("observer_type", "summary")
        self.default_buckets = (defaults.get("histogram_options") or {}).get("buckets", DEFAULT_BUCKETS)
        self.glob_rules, self.regex_rules = [], []
        for rule in config["mappings"]:
            if rule.get("match_type", defaults.get("match_type", "glob")) == "regex":
                self.regex_rules.append((re.compile(rule["match"]), rule))
            else:
                pattern = "^" + r"\.".join(
                    "([^.]*)" if part == "*" else re.escape(part).replace(r"\*", "([^.]*)")
                    for part in rule["match"].split(".")) + "$"
                self.glob_rules.append((re.compile(pattern), rule))

    def map(self, event: Event) -> Mapped | None:
        """What the exporter makes of one event: a metric, or None when dropped."""
        for rules, search in ((self.glob_rules, "fullmatch"), (self.regex_rules, "search")):
            for pattern, rule in rules:
                wanted = rule.get("match_metric_type")
                if wanted and wanted != event.kind:
                    continue
                found = getattr(pattern, search)(event.name)
                if not found:
                    continue
                if rule.get("action", "map") == "drop":
                    return None
                groups = found.groups()

                def expand(text: str) -> str:
                    return _REF.sub(lambda m: groups[int(m.group(1) or m.group(2)) - 1], str(text))

                labels = dict(event.tags)
                labels.update({key: expand(value) for key, value in (rule.get("labels") or {}).items()})
                options = rule.get("histogram_options") or {}
                return Mapped(expand(rule["name"]), event.kind, labels,
                              list(options.get("buckets", self.default_buckets)),
                              rule.get("observer_type", self.default_observer))
        return Mapped(escape(event.name), event.kind, dict(event.tags))


class Exporter:
    """The series the exporter would hold after these packets, served in Prometheus' text format."""

    def __init__(self, mapping: Mapping):
        self.mapping = mapping
        self.lock = threading.Lock()
        self.series: dict[tuple, dict] = {}   # (name, sorted labels) -> state
        self.kinds: dict[str, tuple[str, tuple[str, ...]]] = {}  # name -> (kind, label names)
        self.conflicts: list[str] = []

    def feed(self, line: str) -> None:
        for event in parse_line(line):
            mapped = self.mapping.map(event)
            if mapped is None:
                continue
            label_names = tuple(sorted(mapped.labels))
            known = self.kinds.setdefault(mapped.name, (mapped.kind, label_names))
            if known != (mapped.kind, label_names):
                # the real exporter refuses a metric whose type or label names change: it would be lost
                self.conflicts.append(f"{mapped.name}: {known} then {(mapped.kind, label_names)}")
                continue
            key = (mapped.name, tuple(sorted(mapped.labels.items())))
            with self.lock:
                state = self.series.setdefault(key, {"kind": mapped.kind, "value": 0.0, "count": 0, "sum": 0.0,
                                                     "buckets": {b: 0 for b in mapped.buckets}})
                if mapped.kind == "counter":
                    state["value"] += event.value
                elif mapped.kind == "gauge":
                    state["value"] = state["value"] + event.value if event.relative else event.value
                else:
                    state["count"] += 1
                    state["sum"] += event.value
                    for bound in state["buckets"]:
                        if event.value <= bound:
                            state["buckets"][bound] += 1

    def names(self) -> set[str]:
        return {name for name, _ in self.series}

    def render(self) -> str:
        lines = []
        with self.lock:
            items = sorted(self.series.items())
        typed = set()
        for (name, labels), state in items:
            kind = state["kind"]
            if name not in typed:
                lines.append(f"# TYPE {name} {'histogram' if kind == 'observer' else kind}")
                typed.add(name)
            if kind == "observer":
                for bound, count in sorted(state["buckets"].items()):
                    lines.append(_sample(f"{name}_bucket", labels + (("le", _fmt(bound)),), count))
                lines.append(_sample(f"{name}_bucket", labels + (("le", "+Inf"),), state["count"]))
                lines.append(_sample(f"{name}_sum", labels, state["sum"]))
                lines.append(_sample(f"{name}_count", labels, state["count"]))
            else:
                lines.append(_sample(name, labels, state["value"]))
        return "\n".join(lines) + "\n"

    def serve(self, port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
        """/metrics (any path) in Prometheus' text format, from a daemon thread."""
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's API
                body = exporter.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer((host, port), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    def listen(self, host: str, udp_port: int | None, tcp_port: int | None) -> list[socketserver.BaseServer]:
        """StatsD lines over UDP (one or more per datagram) and TCP (one per line), from daemon threads."""
        exporter = self

        class Datagrams(socketserver.BaseRequestHandler):
            def handle(self):
                for line in self.request[0].decode(errors="replace").splitlines():
                    if line.strip():
                        exporter.feed(line.strip())

        class Stream(socketserver.StreamRequestHandler):
            def handle(self):
                for raw in self.rfile:
                    if raw.strip():
                        exporter.feed(raw.decode(errors="replace").strip())

        servers = []
        if udp_port is not None:
            servers.append(socketserver.ThreadingUDPServer((host, udp_port), Datagrams))
        if tcp_port is not None:
            servers.append(socketserver.ThreadingTCPServer((host, tcp_port), Stream))
        for server in servers:
            threading.Thread(target=server.serve_forever, daemon=True).start()
        return servers


def _fmt(value: float) -> str:
    return "+Inf" if math.isinf(value) else repr(float(value))


def _sample(name: str, labels: tuple, value: float) -> str:
    body = ",".join(f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
                    for k, v in labels)
    return f"{name}{{{body}}} {value}" if body else f"{name} {value}"


def _address(text: str) -> tuple[str, int]:
    """":9125" or "host:9125" (the exporter's flag syntax) -> (host, port); an empty host is every address."""
    host, _, port = text.rpartition(":")
    return host or "0.0.0.0", int(port)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--statsd.mapping-config", dest="mapping", required=True, type=Path)
    parser.add_argument("--statsd.listen-udp", dest="udp", default=":9125")
    parser.add_argument("--statsd.listen-tcp", dest="tcp", default=":9125")
    parser.add_argument("--web.listen-address", dest="web", default=":9102")
    args = parser.parse_args(argv)
    exporter = Exporter(Mapping(args.mapping))
    udp_host, udp_port = _address(args.udp)
    tcp_host, tcp_port = _address(args.tcp)
    exporter.listen(udp_host, udp_port, None)
    exporter.listen(tcp_host, None, tcp_port)
    web_host, web_port = _address(args.web)
    server = exporter.serve(web_port, web_host)
    print(f"statsd_exporter stand-in: StatsD on udp {args.udp} and tcp {args.tcp}, metrics on {args.web}",
          flush=True)
    threading.Event().wait()  # the servers run in daemon threads


if __name__ == "__main__":
    main()
