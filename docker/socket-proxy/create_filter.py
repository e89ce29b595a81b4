"""The docker-socket-proxy's container-create filter: decides on the parsed request, by allow-list.

haproxy (docker/socket-proxy/haproxy.cfg) sends `POST /containers/create` here and every other allowed call
straight to the engine. A body is passed on only when, parsed as JSON, it holds nothing but what Airflow's
DockerOperator sends for a helical runner (dags/helical_lib/runner.py); it is then forwarded to the engine
re-serialised from the parsed value, so the engine never sees bytes this filter did not understand.

Refused (403, with the reason as Docker's `{"message": ...}`): bodies that aren't UTF-8 JSON objects;
duplicate keys (Docker's Go decoder takes the last one) and keys that differ only in case; struct keys that
aren't ASCII (Go's decoder folds `ſ` to `s` and the Kelvin sign to `k`) or aren't in the allow-list, compared
case-insensitively as Docker compares them; an image no resource profile names; root or a user name; binds
or mounts of anything but the data folder paths the DAG uses (the folder itself read-only); a network other
than the runners'; capabilities not all dropped, or added; security options other than no-new-privileges;
device fields other than GPU device requests; host namespaces, privileged mode, published ports.

Why a filter of its own: regular expressions over raw JSON were bypassed by whitespace, escapes, case and
duplicate keys (issue 20), and haproxy can't parse JSON. Standard library only (http.server, http.client,
json), so it runs in any Python image and on the host; PyYAML reads the profiles where present.

Settings, from the environment (the Airflow workers' names, so both read one .env):
  FILTER_BIND              address:port to listen on                   (default 127.0.0.1:2376)
  DOCKER_SOCKET            the engine's unix socket                      (default /var/run/docker.sock)
  HELICAL_PROFILES         config/profiles.yaml: the images runners may use
  HELICAL_RUNNER_IMAGES    extra allowed images, comma-separated (tests' own images); optional
  HELICAL_DATA_DIR         host data folder runners mount at /data
  HELICAL_RUNNER_NETWORK   the runners' network (NetworkMode)
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import re
import socket
import sys
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

DATA_MOUNT = "/data"
WRITABLE = ("scratch", "helical")  # as dags/helical_lib/runner.py WRITABLE_DIRS: read-write under /data
MAX_BODY = 1 << 20  # real create bodies are a few kB
CREATE_PATH = re.compile(r"^(/v1\.[4-9][0-9])?/containers/create$")
QUERY_KEYS = {"name", "platform"}


class Refused(Exception):
    """A create request outside the allow-list; str() is the one-line reason."""


@dataclass(frozen=True)
class Policy:
    images: frozenset[str]  # exact image references runners may use
    data_dir: str  # host path of the data folder (no trailing slash)
    network: str  # the only NetworkMode allowed

    @classmethod
    def from_env(cls, env=None) -> "Policy":
        env = os.environ if env is None else env
        images = set(profile_images(env["HELICAL_PROFILES"])) if env.get("HELICAL_PROFILES") else set()
        images |= {i.strip() for i in env.get("HELICAL_RUNNER_IMAGES", "").split(",") if i.strip()}
        data_dir = env.get("HELICAL_DATA_DIR", "").rstrip("/")
        network = env.get("HELICAL_RUNNER_NETWORK", "")
        missing = [name for name, value in (("an image (HELICAL_PROFILES)", images), ("HELICAL_DATA_DIR", data_dir),
                                            ("HELICAL_RUNNER_NETWORK", network)) if not value]
        if missing:
            raise SystemExit(f"create_filter: error: not configured: {', '.join(missing)}")
        if not data_dir.startswith("/") or os.path.normpath(data_dir) != data_dir:
            raise SystemExit(f"create_filter: error: HELICAL_DATA_DIR must be a normalised absolute path: {data_dir!r}")
        return cls(frozenset(images), data_dir, network)

    def mounts(self) -> dict[str, tuple[str, bool]]:
        """target -> (host source, must be read-only)."""
        out = {DATA_MOUNT: (self.data_dir, True)}
        out.update({f"{DATA_MOUNT}/{name}": (f"{self.data_dir}/{name}", False) for name in WRITABLE})
        return out


def profile_images(path: str) -> list[str]:
    """Every profile's `image` in config/profiles.yaml."""
    import yaml

    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    return [p["image"] for p in (raw.get("profiles") or {}).values() if isinstance(p, dict) and p.get("image")]


# --- parsing ------------------------------------------------------------------------------------------

def _pairs(pairs: list[tuple[str, object]]) -> dict:
    seen: set[str] = set()
    for key, _ in pairs:
        folded = key.casefold()
        if folded in seen:
            raise Refused(f"duplicate key {key!r} (Docker would take the last one)")
        seen.add(folded)
    return dict(pairs)


def _no_constants(name: str):
    raise Refused(f"{name} is not JSON")


def parse(body: bytes) -> dict:
    """The body as a JSON object; Refused for anything that isn't strict UTF-8 JSON without duplicates."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused("body is not UTF-8") from None
    try:
        value = json.loads(text, object_pairs_hook=_pairs, parse_constant=_no_constants)
    except json.JSONDecodeError as err:
        raise Refused(f"body is not JSON ({err.msg})") from None
    except RecursionError:
        raise Refused("body is nested too deeply") from None
    if not isinstance(value, dict):
        raise Refused("body is not a JSON object")
    return value


def _struct(obj: object, fields: dict, where: str) -> dict:
    """Go-struct semantics: keys matched case-insensitively to `fields` (canonical name -> check), ASCII
    only, unknown keys refused. Returns the object with canonical keys and checked values."""
    if not isinstance(obj, dict):
        raise Refused(f"{where} is not an object")
    by_fold = {name.lower(): name for name in fields}
    out = {}
    for key, value in obj.items():
        if not key.isascii() or key.lower() not in by_fold:
            raise Refused(f"{where}.{key} is not allowed")
        name = by_fold[key.lower()]
        checked = fields[name](value, f"{where}.{name}")
        if checked is not _DROP:
            out[name] = checked
    return out


_DROP = object()  # a null/empty value of an optional field: left out of what is forwarded


# --- value checks: each returns the value to forward or raises Refused ---------------------------------

def _null(value, where):
    if value is None:
        return _DROP
    raise Refused(f"{where} must be empty")


def _empty(value, where):
    if value in (None, [], {}, "", False):
        return _DROP
    raise Refused(f"{where} must be empty")


def _typed(ok, what: str):
    """A check for an optional field: null is left out, anything else must pass `ok`."""
    def check(value, where):
        if value is None:
            return _DROP
        if not ok(value):
            raise Refused(f"{where} must be {what}")
        return value
    return check


_bool = _typed(lambda v: isinstance(v, bool), "true or false")
_int = _typed(lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "a non-negative integer")
_str = _typed(lambda v: isinstance(v, str), "a string")
_strings = _typed(lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v), "a list of strings")
_labels = _typed(lambda v: isinstance(v, dict) and all(isinstance(s, str) for s in v.values()),
                 "a map of strings to strings")


def _items(value, where, item):
    """A list field: null is left out, each element is checked by item(element, where[i])."""
    if value is None:
        return _DROP
    if not isinstance(value, list):
        raise Refused(f"{where} must be a list")
    return [item(element, f"{where}[{i}]") for i, element in enumerate(value)]


def _false(value, where):
    if value in (None, False):
        return _DROP
    raise Refused(f"{where} is not allowed")


def _signal(value, where):
    if value is None:
        return _DROP
    if not isinstance(value, str) or not re.fullmatch(r"SIG[A-Z0-9+-]+|[0-9]{1,2}", value):
        raise Refused(f"{where} is not a signal")
    return value


_USER = re.compile(r"([0-9]+)(:[0-9]+)?")


def _user(value, where):
    """A numeric uid other than 0 (a name could be root: the image decides what it means)."""
    match = _USER.fullmatch(value) if isinstance(value, str) else None
    if not match:
        raise Refused(f"{where} must be a numeric uid[:gid], got {value!r}")
    if int(match.group(1)) == 0:
        raise Refused(f"{where} is root")
    return value


_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}:[0-9A-Fa-f.:]+")


def _extra_hosts(value, where):
    if value is None:
        return _DROP
    if not isinstance(value, list) or not all(isinstance(v, str) and _HOST.fullmatch(v) for v in value):
        raise Refused(f"{where} must be a list of name:address")
    return value


def _check(policy: Policy):
    """The allow-list, as one function per field; closures over the deployment's policy."""

    def image(value, where):
        if not isinstance(value, str) or value not in policy.images:
            raise Refused(f"{where} {value!r} is not a runner image of the resource profiles")
        return value

    def network(value, where):
        if value != policy.network:
            raise Refused(f"{where} {value!r} is not the runners' network {policy.network!r}")
        return value

    def cap_drop(value, where):
        if not isinstance(value, list) or "all" not in [str(v).lower() for v in value]:
            raise Refused(f"{where} must drop ALL capabilities")
        return value

    def security_opt(value, where):
        allowed = {"no-new-privileges", "no-new-privileges:true", "no-new-privileges=true"}
        if not isinstance(value, list) or not value or any(not isinstance(v, str) or v not in allowed for v in value):
            raise Refused(f"{where} may only hold no-new-privileges, got {value!r}")
        return value

    def mount_pair(source, target, read_only, where):
        allowed = policy.mounts()
        if not isinstance(source, str) or not isinstance(target, str) or target not in allowed:
            raise Refused(f"{where}: {source!r} -> {target!r} is not a data folder mount")
        want, must_be_ro = allowed[target]
        if source != want:
            raise Refused(f"{where}: {source!r} may not be mounted at {target} (only {want})")
        if must_be_ro and read_only is not True:
            raise Refused(f"{where}: {target} must be read-only")

    mount_fields = {"Target": _str, "Source": _str, "Type": _str, "ReadOnly": _bool, "Consistency": _str}

    def mount(item, where):
        m = _struct(item, mount_fields, where)
        if m.get("Type") != "bind":
            raise Refused(f"{where}.Type must be bind")
        mount_pair(m.get("Source"), m.get("Target"), m.get("ReadOnly", False), where)
        return m

    def mounts(value, where):
        return _items(value, where, mount)

    def binds(value, where):
        if value is None:
            return _DROP
        if not isinstance(value, list):
            raise Refused(f"{where} must be a list")
        for i, bind in enumerate(value):
            parts = bind.split(":") if isinstance(bind, str) else []
            if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
                raise Refused(f"{where}[{i}] {bind!r} must be source:target[:ro|rw]")
            mount_pair(parts[0], parts[1], len(parts) == 3 and parts[2] == "ro", f"{where}[{i}]")
        return value

    request_fields = {"Driver": _str, "Count": None, "DeviceIDs": _strings, "Capabilities": None,
                      "Options": _empty}

    def count(value, where):
        if not isinstance(value, int) or isinstance(value, bool) or value < -1:
            raise Refused(f"{where} must be a GPU count")
        return value

    def capabilities(value, where):
        gpu = {"gpu", "compute", "utility"}
        if (not isinstance(value, list) or not value
                or not all(isinstance(c, list) and "gpu" in c and set(c) <= gpu for c in value)):
            raise Refused(f"{where} may only ask for GPUs")
        return value

    request_fields.update({"Count": count, "Capabilities": capabilities})

    def device_request(item, where):
        r = _struct(item, request_fields, where)
        if r.get("Driver", "") not in ("", "nvidia") or "Capabilities" not in r:
            raise Refused(f"{where} must be a GPU request")
        return r

    def device_requests(value, where):
        return _items(value, where, device_request)

    host_fields = {
        "NetworkMode": network, "Mounts": mounts, "Binds": binds, "CapDrop": cap_drop, "CapAdd": _empty,
        "SecurityOpt": security_opt, "Memory": _int, "MemorySwap": None, "ShmSize": _int, "PidsLimit": _int,
        "CpuShares": _int, "NanoCpus": _int, "AutoRemove": _bool, "ExtraHosts": _extra_hosts,
        "DeviceRequests": device_requests, "Privileged": _false, "PublishAllPorts": _false,
        "PortBindings": _empty, "Ulimits": _empty, "ReadonlyRootfs": _bool, "OomKillDisable": _false,
        "Dns": _strings, "DnsSearch": _strings, "DnsOptions": _strings, "Init": _bool,
    }

    def memory_swap(value, where):  # -1 = unlimited swap within Memory's limit (Docker's convention)
        if value is None:
            return _DROP
        if value != -1:
            return _int(value, where)
        return value

    host_fields["MemorySwap"] = memory_swap

    def log_options(value, where):  # DockerOperator's log_opts_max_size / log_opts_max_file
        if value is None:
            return _DROP
        if (not isinstance(value, dict) or not set(value) <= {"max-size", "max-file"}
                or not all(isinstance(v, str) for v in value.values())):
            raise Refused(f"{where} may only set max-size and max-file")
        return value

    def log_type(value, where):
        if value in (None, ""):
            return _DROP
        if value not in ("json-file", "local"):
            raise Refused(f"{where} {value!r} is not a local log driver")
        return value

    def log_config(value, where):
        if value is None:
            return _DROP
        return _struct(value, {"Type": log_type, "Config": log_options}, where)

    host_fields["LogConfig"] = log_config

    def host_config(value, where):
        config = _struct(value, host_fields, where)
        for required in ("NetworkMode", "CapDrop", "SecurityOpt"):
            if required not in config:
                raise Refused(f"{where}.{required} is required")
        return config

    return {
        "Image": image, "User": _user, "HostConfig": host_config,
        "Cmd": _strings, "Env": _strings, "Labels": _labels, "Hostname": _str, "Domainname": _str,
        "WorkingDir": _str, "Tty": _bool, "OpenStdin": _bool, "StdinOnce": _bool, "AttachStdin": _bool,
        "AttachStdout": _bool, "AttachStderr": _bool, "NetworkDisabled": _bool, "StopSignal": _signal,
        "StopTimeout": _int, "Entrypoint": _empty, "ExposedPorts": _empty, "Volumes": _empty,
        "NetworkingConfig": _null, "MacAddress": _null, "Healthcheck": _null, "Runtime": _null,
    }


def check_create(body: bytes, policy: Policy) -> dict:
    """The container config to forward, or Refused naming the first field outside the allow-list.

    body: the raw request body of POST /containers/create. Returns the parsed config with Docker's
    canonical key names and empty optional fields left out."""
    config = _struct(parse(body), _check(policy), "body")
    for required in ("Image", "User", "HostConfig"):
        if required not in config:
            raise Refused(f"body.{required} is required")
    return config


def check_query(query: str) -> None:
    names = [name for name, _ in parse_qsl(query, keep_blank_values=True)]
    extra = set(names) - QUERY_KEYS
    if extra or len(names) != len(set(names)):
        raise Refused(f"query parameters {sorted(set(names))} are not allowed (only name, platform, once each)")


# --- serving ------------------------------------------------------------------------------------------

class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 120):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "helical-create-filter"
    policy: Policy
    docker_socket: str

    def do_POST(self):  # noqa: N802 - http.server's naming
        url = urlsplit(self.path)
        try:
            if not CREATE_PATH.match(url.path):
                raise Refused(f"{self.command} {url.path} is not a container create")
            check_query(url.query)
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                raise Refused("chunked bodies are not accepted")
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_BODY:
                raise Refused(f"body of {length} bytes (1 to {MAX_BODY} accepted)")
            config = check_create(self.rfile.read(length), self.policy)
        except (Refused, ValueError) as err:
            self.log_message("refused: %s", err)
            return self._reply(403, {"message": f"docker-socket-proxy: {err}"})
        body = json.dumps(config).encode()
        conn = _UnixConnection(self.docker_socket)
        try:
            conn.request("POST", self.path, body=body, headers={"Content-Type": "application/json",
                                                                "Content-Length": str(len(body))})
            response = conn.getresponse()
            data = response.read()
            self._reply(response.status, data, response.getheader("Content-Type", "application/json"))
        except OSError as err:
            self._reply(502, {"message": f"docker-socket-proxy: engine unreachable: {err}"})
        finally:
            conn.close()

    def _refuse(self):
        self._reply(403, {"message": f"docker-socket-proxy: {self.command} is not allowed here"})

    do_GET = do_PUT = do_DELETE = do_HEAD = do_PATCH = _refuse  # noqa: N815

    def _reply(self, status: int, payload, content_type: str = "application/json"):
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_message(self, fmt, *args):
        sys.stderr.write(f"create_filter: {self.address_string()} {fmt % args}\n")


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # haproxy closes idle keep-alive connections: a reset there is routine, not worth a traceback
        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)


def serve(bind: str, docker_socket: str, policy: Policy) -> Server:
    host, _, port = bind.rpartition(":")
    handler = type("BoundHandler", (Handler,), {"policy": policy, "docker_socket": docker_socket})
    return Server((host or "0.0.0.0", int(port)), handler)


def main() -> None:
    policy = Policy.from_env()
    server = serve(os.environ.get("FILTER_BIND", "127.0.0.1:2376"),
                   os.environ.get("DOCKER_SOCKET", "/var/run/docker.sock"), policy)
    print(f"create_filter: listening on {server.server_address[0]}:{server.server_address[1]}; images "
          f"{sorted(policy.images)}, data folder {policy.data_dir}, network {policy.network}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
