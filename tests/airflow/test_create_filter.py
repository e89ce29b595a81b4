"""The socket proxy's create filter (docker/socket-proxy/create_filter.py) against the bodies Airflow's own
DockerOperator sends: captured from the real operator and docker-py talking HTTP to a stand-in engine, then
passed, and then altered one way at a time as an attacker would, each alteration refused.

The same variants go through the real haproxy + filter + engine in tests/docker/test_socket_proxy.py."""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from airflow.providers.docker.operators.docker import DockerOperator

from conftest import REPO
from helical_lib import profiles
from helical_lib.runner import RunnerOperator, container_kwargs
from helical_lib.settings import Settings

_spec = importlib.util.spec_from_file_location("create_filter", REPO / "docker/socket-proxy/create_filter.py")
create_filter = importlib.util.module_from_spec(_spec)
sys.modules["create_filter"] = create_filter  # dataclasses look their module up there
_spec.loader.exec_module(create_filter)

DATA_DIR = "/srv/helical/data"
NETWORK = "helical-runners"
POLICY = create_filter.Policy.from_env({"HELICAL_PROFILES": str(REPO / "config/profiles.yaml"),
                                        "HELICAL_DATA_DIR": DATA_DIR, "HELICAL_RUNNER_NETWORK": NETWORK})


class _Engine(BaseHTTPRequestHandler):
    """Just enough of the Engine API for docker-py: version negotiation, then the create body is kept."""
    protocol_version = "HTTP/1.1"
    bodies: list

    def _json(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802
        if self.path.endswith("/_ping"):
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", "2")
            self.end_headers()
            return self.wfile.write(b"OK")
        if self.path.endswith("/version"):
            return self._json(200, {"ApiVersion": "1.47", "MinAPIVersion": "1.24", "Version": "27.0.0"})
        return self._json(200, {})

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if "/containers/create" in self.path:
            self.bodies.append(body)
        # stop the operator right after the create: the body is all this test needs
        return self._json(500, {"message": "stand-in engine: stopping here"})

    def log_message(self, *args):
        pass


def operator_body(profile_name: str, monkeypatch) -> bytes:
    """The container-create body RunnerOperator (through DockerOperator and docker-py) sends for a profile."""
    bodies: list = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("E", (_Engine,), {"bodies": bodies}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        settings = Settings.from_env({"HELICAL_DATA_DIR": DATA_DIR, "HELICAL_RUNNER_NETWORK": NETWORK,
                                      "DOCKER_HOST": f"tcp://127.0.0.1:{server.server_port}",
                                      "PUSHGATEWAY_URL": "http://pushgateway:9091"})
        op = RunnerOperator(task_id="finetune", step="finetune", image="placeholder", queue="cpu")
        kwargs = container_kwargs(profiles.get(profile_name), settings, dag_id="helical_finetune",
                                  task_id="finetune", run_id="manual__1", try_number=1,
                                  s3_env={"S3_ENDPOINT_URL": "http://minio:9000", "AWS_ACCESS_KEY_ID": "k",
                                          "AWS_SECRET_ACCESS_KEY": "s"}, data="s3://helical/incoming/a.h5ad",
                                  etag="e1")
        op._private_environment = kwargs.pop("private_environment")
        for name, value in kwargs.items():
            setattr(op, name, value)
        op.command = ["finetune", "--data=s3://helical/chunks/a/manifest.json", "--label-column=cell_type"]
        with pytest.raises(Exception) as err:
            DockerOperator._run_image_with_mounts(op, op.mounts, add_tmp_variable=False)
        assert "stopping here" in str(err.value) or "500" in str(err.value), err.value
    finally:
        server.shutdown()
    assert len(bodies) == 1, "DockerOperator sent no container create"
    return bodies[0]


@pytest.fixture(scope="module")
def cpu_body():
    mp = pytest.MonkeyPatch()
    try:
        return json.loads(operator_body("cpu-small", mp))
    finally:
        mp.undo()


@pytest.mark.parametrize("profile", sorted(profiles.load_all()[1]))
def test_what_docker_operator_sends_for_every_profile_passes(profile, monkeypatch):
    body = operator_body(profile, monkeypatch)
    config = create_filter.check_create(body, POLICY)
    assert config["Image"] == profiles.get(profile)["image"]
    assert config["HostConfig"]["NetworkMode"] == NETWORK and config["User"] == "50000:0"
    if profiles.get(profile)["device"] == "cuda":  # the GPU request passes, as DockerOperator words it
        assert config["HostConfig"]["DeviceRequests"][0]["Capabilities"] == [["gpu"]]


def refused(body: dict | bytes | str) -> str:
    raw = body if isinstance(body, bytes) else (body if isinstance(body, str) else json.dumps(body)).encode()
    with pytest.raises(create_filter.Refused) as err:
        create_filter.check_create(raw, POLICY)
    return str(err.value)


def with_host(body: dict, **changes) -> dict:
    return {**body, "HostConfig": {**body["HostConfig"], **changes}}


ROOT_BIND = [f"{'/'}:/host"]


@pytest.mark.parametrize("change,reason", [
    (lambda b: {**b, "User": "0:0"}, "root"),
    (lambda b: {**b, "User": "0"}, "root"),
    (lambda b: {**b, "User": "root"}, "numeric"),
    (lambda b: {**b, "User": "00:0"}, "root"),
    (lambda b: {**b, "Image": "debian:bookworm"}, "not a runner image"),
    (lambda b: {**b, "Entrypoint": ["/bin/sh", "-c", "id"]}, "Entrypoint"),
    (lambda b: with_host(b, Binds=ROOT_BIND), "Binds"),
    (lambda b: with_host(b, Binds=["/var/run:/var/run"]), "Binds"),
    (lambda b: with_host(b, Binds=[f"{DATA_DIR}:/data"]), "read-only"),
    (lambda b: with_host(b, Binds=[f"{DATA_DIR}/../..:/data:ro"]), "Binds"),
    (lambda b: with_host(b, Binds=[f"{DATA_DIR}:/data:ro,rshared"]), "Binds"),
    (lambda b: with_host(b, Mounts=[{"Type": "bind", "Source": "/", "Target": "/host"}]), "Mounts"),
    (lambda b: with_host(b, Mounts=[{"Type": "bind", "Source": "/var/run", "Target": "/data/scratch"}]), "Mounts"),
    (lambda b: with_host(b, Mounts=[{"Type": "bind", "Source": DATA_DIR, "Target": "/data", "ReadOnly": False}]),
     "read-only"),
    (lambda b: with_host(b, Mounts=[{"Type": "volume", "Source": "x", "Target": "/data/scratch"}]), "bind"),
    (lambda b: with_host(b, Mounts=[{"Type": "bind", "Source": f"{DATA_DIR}/scratch", "Target": "/data/scratch",
                                     "BindOptions": {"Propagation": "rshared"}}]), "BindOptions"),
    (lambda b: with_host(b, Privileged=True), "Privileged"),
    (lambda b: with_host(b, PidMode="host"), "PidMode"),
    (lambda b: with_host(b, IpcMode="host"), "IpcMode"),
    (lambda b: with_host(b, UsernsMode="host"), "UsernsMode"),
    (lambda b: with_host(b, UTSMode="host"), "UTSMode"),
    (lambda b: with_host(b, CgroupnsMode="host"), "CgroupnsMode"),
    (lambda b: with_host(b, NetworkMode="host"), "network"),
    (lambda b: with_host(b, NetworkMode="helical"), "network"),
    (lambda b: with_host(b, NetworkMode="container:airflow-worker"), "network"),
    (lambda b: with_host(b, CapAdd=["SYS_ADMIN"]), "CapAdd"),
    (lambda b: with_host(b, CapDrop=["NET_RAW"]), "ALL"),
    (lambda b: {**b, "HostConfig": {k: v for k, v in b["HostConfig"].items() if k != "CapDrop"}}, "CapDrop"),
    (lambda b: with_host(b, SecurityOpt=["no-new-privileges", "seccomp=unconfined"]), "SecurityOpt"),
    (lambda b: with_host(b, SecurityOpt=["apparmor=unconfined"]), "SecurityOpt"),
    (lambda b: with_host(b, SecurityOpt=["label=disable"]), "SecurityOpt"),
    (lambda b: with_host(b, Devices=[{"PathOnHost": "/dev/sda", "PathInContainer": "/dev/sda",
                                      "CgroupPermissions": "rwm"}]), "Devices"),
    (lambda b: with_host(b, DeviceCgroupRules=["a *:* rwm"]), "DeviceCgroupRules"),
    (lambda b: with_host(b, DeviceRequests=[{"Driver": "", "Count": 1, "Capabilities": [["gpu"]],
                                             "Options": {"x": "y"}}]), "Options"),
    (lambda b: with_host(b, DeviceRequests=[{"Driver": "evil", "Count": 1, "Capabilities": [["gpu"]]}]), "GPU"),
    (lambda b: with_host(b, DeviceRequests=[{"Count": 1, "Capabilities": [["sys_admin"]]}]), "GPUs"),
    (lambda b: with_host(b, PortBindings={"22/tcp": [{"HostPort": "2222"}]}), "PortBindings"),
    (lambda b: with_host(b, VolumesFrom=["airflow-worker"]), "VolumesFrom"),
    (lambda b: with_host(b, Sysctls={"kernel.core_pattern": "|/x"}), "Sysctls"),
    (lambda b: with_host(b, LogConfig={"Type": "syslog", "Config": {"syslog-address": "tcp://x"}}), "log"),
    (lambda b: {**b, "NetworkingConfig": {"EndpointsConfig": {"helical": {}}}}, "NetworkingConfig"),
    (lambda b: {**b, "Volumes": {"/x": {}}}, "Volumes"),
    (lambda b: {**b, "Nonsense": 1}, "not allowed"),
    (lambda b: {k: v for k, v in b.items() if k != "HostConfig"}, "HostConfig"),
    (lambda b: {k: v for k, v in b.items() if k != "User"}, "User"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_one_change_outside_the_allow_list_is_refused(cpu_body, change, reason):
    assert reason.lower() in refused(change(cpu_body)).lower()


def test_keys_compared_as_docker_compares_them(cpu_body):
    """Docker's Go decoder matches struct keys case-insensitively (Unicode simple folding) and takes the
    last of duplicate keys: each way to smuggle a field past a byte-level check is refused."""
    host = json.dumps(cpu_body["HostConfig"])[1:-1]
    rest = json.dumps({k: v for k, v in cpu_body.items() if k != "HostConfig"})[1:-1]
    for smuggled in ['"privileged": true', '"PRIVILEGED": true', '"Privil\\u0065ged": true', '"Privileged":\ttrue',
                     '"Privileged":\n true', '"pidmode": "host"']:
        assert refused("{" + rest + ', "HostConfig": {' + host + ", " + smuggled + "}}")
    # duplicates: the last one would win in Docker
    assert "duplicate" in refused("{" + rest + ', "HostConfig": {' + host + ', "NetworkMode": "host"}}')
    assert "duplicate" in refused("{" + rest + ', "user": "0", "HostConfig": {' + host + "}}")
    assert "duplicate" in refused("{" + rest + ', "Us\\u0065r": "0", "HostConfig": {' + host + "}}")
    # non-ASCII keys Go folds onto ASCII ones: the long s (U+017F) matches "s", the Kelvin sign "k"
    assert refused("{" + rest + ', "HostConfig": {' + host.replace('"Mounts"', '"Mount\u017f"') + "}}")
    assert refused("{" + rest + ', "HostConfig": {' + host.replace('"NetworkMode"', '"Networ\u212aMode"') + "}}")


@pytest.mark.parametrize("raw", [b"", b"null", b"[]", b'"x"', b"{", b'{"Image": NaN}', b"\xff\xfe{}",
                                 b'{"Image": "helical-runner:cpu"} {"Image": "x"}',
                                 b'{"Labels": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                                 b"\xef\xbb\xbf{}"],
                         ids=["empty", "null", "list", "string", "truncated", "NaN", "not-utf8", "trailing",
                              "nested-deeply", "bom"])
def test_bodies_that_do_not_parse_are_refused(raw):
    assert refused(raw)


def test_forwarded_body_is_the_parsed_one_with_dockers_key_names(cpu_body):
    lowered = {k.lower() if k == "Cmd" else k: v for k, v in cpu_body.items()}
    config = create_filter.check_create(json.dumps(lowered).encode(), POLICY)
    assert config["Cmd"] == cpu_body["Cmd"] and "cmd" not in config
    assert json.loads(json.dumps(config)) == config


def test_query_allows_a_name_only():
    create_filter.check_query("name=helical-finetune-run-t1-abc")
    for bad in ("name=a&name=b", "name=a&other=1"):
        with pytest.raises(create_filter.Refused):
            create_filter.check_query(bad)
