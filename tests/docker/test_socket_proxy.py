"""docker/socket-proxy/haproxy.cfg, run by Debian's haproxy in front of a real Docker engine: the calls
Airflow's DockerOperator makes go through; everything that could take over the host answers 403."""

from __future__ import annotations

import io
import json
import subprocess
import urllib.error
import urllib.request

import pytest

from conftest import REPO, RUNNER_NETWORK

pytestmark = pytest.mark.docker
CFG = REPO / "docker/socket-proxy/haproxy.cfg"


def status(proxy: str, method: str, path: str, body: bytes | None = None) -> int:
    url = proxy.replace("tcp://", "http://") + path
    request = urllib.request.Request(url, data=body, method=method,
                                     headers={"Content-Type": "application/json"} if body else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_config_is_valid():
    result = subprocess.run(["haproxy", "-c", "-f", str(CFG)], capture_output=True, text=True,
                            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    assert result.returncode == 0, result.stdout + result.stderr
    # the attach call upgrades to a raw stream: without a tunnel timeout it is cut after `timeout server`
    assert "timeout tunnel" in CFG.read_text()


DENIED = [
    ("POST", "/containers/abc/exec", "exec create"),
    ("POST", "/exec/abc/start", "exec start"),
    ("POST", "/build", "build"),
    ("POST", "/images/create?fromImage=alpine", "pull"),
    ("DELETE", "/images/helical-runner:cpu", "image delete"),
    ("POST", "/commit?container=abc", "commit"),
    ("GET", "/volumes", "volumes list"),
    ("POST", "/volumes/create", "volume create"),
    ("GET", "/networks", "networks list"),
    ("POST", "/networks/create", "network create"),
    ("GET", "/swarm", "swarm"),
    ("POST", "/swarm/init", "swarm init"),
    ("GET", "/plugins", "plugins"),
    ("GET", "/secrets", "secrets"),
    ("GET", "/configs", "configs"),
    ("GET", "/services", "services"),
    ("GET", "/nodes", "nodes"),
    ("GET", "/system/df", "system df"),
    ("GET", "/events", "events"),
    ("POST", "/containers/prune", "container prune"),
    ("POST", "/images/prune", "image prune"),
    ("POST", "/volumes/prune", "volume prune"),
    ("PUT", "/containers/abc/archive?path=/", "copy into a container"),
    ("GET", "/containers/abc/export", "export"),
    ("POST", "/containers/abc/update", "update limits"),
    ("POST", "/auth", "registry login"),
]


@pytest.mark.parametrize("prefix", ["", "/v1.41"])
@pytest.mark.parametrize("method,path,what", DENIED, ids=[d[2] for d in DENIED])
def test_dangerous_calls_are_refused(socket_proxy, method, path, what, prefix):
    body = b"{}" if method in ("POST", "PUT") else None
    assert status(socket_proxy, method, prefix + path, body) == 403, what


def runner_body(api, image: str, data_dir, **host) -> dict:
    """A create body as DockerOperator words it for a runner (dags/helical_lib/runner.py): docker-py's own
    create_container_config + create_host_config with the DAG's arguments."""
    import docker

    mounts = [docker.types.Mount("/data", str(data_dir), type="bind", read_only=True),
              docker.types.Mount("/data/scratch", f"{data_dir}/scratch", type="bind")]
    host_config = api.create_host_config(**{
        "network_mode": RUNNER_NETWORK, "mounts": mounts, "mem_limit": "2g", "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"], "pids_limit": 4096, "port_bindings": {}, "ulimits": [],
        "log_config": docker.types.LogConfig(config={}), "cpu_shares": 1024, "auto_remove": False, **host})
    config = api.create_container_config(image, ["info"], user="50000:0", host_config=host_config,
                                         labels={"app": "helical-runner"}, environment={"HELICAL_RUN_ID": "t"})
    return {k: v for k, v in config.items() if v is not None}  # as docker-py's _post_json sends it


@pytest.fixture(scope="module")
def base_body(socket_proxy, data_dir):
    import docker

    api = docker.APIClient(base_url=socket_proxy, version="auto", timeout=30)
    yield runner_body(api, "helical-runner:cpu", data_dir)
    api.close()


def _variants(body: dict, data_dir) -> dict[str, str]:
    """name -> raw body: the trials of issue 20, each a way round a filter that reads bytes."""
    host = json.dumps(body["HostConfig"])[1:-1]
    rest = json.dumps({k: v for k, v in body.items() if k != "HostConfig"})[1:-1]

    def with_host(extra: str, drop: str = "") -> str:
        fields = host if not drop else json.dumps(
            {k: v for k, v in body["HostConfig"].items() if k != drop})[1:-1]
        return "{" + rest + ', "HostConfig": {' + fields + ", " + extra + "}}"

    def top(extra: str, drop: str = "") -> str:
        fields = {k: v for k, v in body.items() if k != drop}
        return json.dumps(fields)[:-1] + ", " + extra + "}"

    root = "/"
    return {
        "root-bind": with_host(f'"Binds": ["{root}:/host"]'),
        "privileged-tab": with_host('"Privileged":\ttrue'),
        "privileged-newline": with_host('"Privileged":\n true'),
        "privileged-escape": with_host('"Privil\\u0065ged": true'),
        "privileged-lowercase": with_host('"privileged": true'),
        "pid-host": with_host('"PidMode": "host"'),
        "pid-host-case": with_host('"pidmode": "host"'),
        "duplicate-network": with_host('"NetworkMode": "host"'),
        "duplicate-user": top('"User": "0:0"', drop=""),
        "mounts-root": with_host(f'"Mounts": [{{"Type": "bind", "Source": "{root}", "Target": "/host"}}]',
                                 drop="Mounts"),
        "var-run": with_host('"Binds": ["/var/run:/run/engine"]'),
        "cap-add": with_host('"CapAdd": ["SYS_ADMIN"]'),
        "devices": with_host('"Devices": [{"PathOnHost": "/dev/mem", "PathInContainer": "/dev/mem", '
                             '"CgroupPermissions": "rwm"}]'),
        "network-host": with_host('"NetworkMode": "host"', drop="NetworkMode"),
        "seccomp-unconfined": with_host('"SecurityOpt": ["no-new-privileges", "seccomp=unconfined"]',
                                        drop="SecurityOpt"),
        "apparmor-unconfined": with_host('"SecurityOpt": ["apparmor=unconfined"]', drop="SecurityOpt"),
        "other-image": top('"Image": "helical-base:bookworm-py312"', drop="Image"),
        "user-0": top('"User": "0"', drop="User"),
        "user-root-name": top('"User": "root"', drop="User"),
        "data-rw": with_host(f'"Mounts": [{{"Type": "bind", "Source": "{data_dir}", "Target": "/data"}}]',
                             drop="Mounts"),
        "not-json": "{" + rest + ", HostConfig: {}}",
    }


VARIANTS = ["root-bind", "privileged-tab", "privileged-newline", "privileged-escape", "privileged-lowercase",
            "pid-host", "pid-host-case", "duplicate-network", "duplicate-user", "mounts-root", "var-run", "cap-add",
            "devices", "network-host", "seccomp-unconfined", "apparmor-unconfined", "other-image", "user-0",
            "user-root-name", "data-rw", "not-json"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_container_create_outside_the_allow_list_is_refused(socket_proxy, base_body, data_dir, docker_client,
                                                            variant):
    """Every trial of issue 20, sent through the real proxy and filter to the real engine: 403, and the
    engine has no new container."""
    before = {c.id for c in docker_client.containers.list(all=True)}
    raw = _variants(base_body, data_dir)[variant]
    for prefix in ("", "/v1.47"):
        assert status(socket_proxy, "POST", f"{prefix}/containers/create?name=trial-{variant}", raw.encode()) == 403
    assert {c.id for c in docker_client.containers.list(all=True)} == before


def test_a_runner_body_passes_and_the_engine_gets_the_parsed_one(socket_proxy, base_body, docker_client):
    raw = json.dumps(base_body).encode()
    url = socket_proxy.replace("tcp://", "http://") + "/v1.41/containers/create?name=allowed-runner-body"
    request = urllib.request.Request(url, data=raw, method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 201
        container_id = json.loads(response.read())["Id"]
    try:
        attrs = docker_client.containers.get(container_id).attrs
        assert attrs["Config"]["User"] == "50000:0" and attrs["HostConfig"]["NetworkMode"] == RUNNER_NETWORK
        assert attrs["HostConfig"]["CapDrop"] == ["ALL"] and attrs["HostConfig"]["Privileged"] is False
    finally:
        docker_client.containers.get(container_id).remove(force=True)


@pytest.mark.parametrize("path", ["/v1.23/containers/create", "/v1.39/containers/create", "/containers//create",
                                  "/containers/%63reate", "/containers/create/"])
def test_create_under_another_path_or_old_api_is_refused(socket_proxy, base_body, path):
    assert status(socket_proxy, "POST", path, json.dumps(base_body).encode()) == 403


def test_start_with_a_host_config_body_is_refused(socket_proxy):
    """API versions before 1.24 took a HostConfig at start; no call but create may carry a body."""
    body = json.dumps({"Binds": ["/:/host"], "Privileged": True}).encode()
    for path in ("/containers/abc/start", "/v1.47/containers/abc/start", "/containers/abc/wait"):
        assert status(socket_proxy, "POST", path, body) == 403


def test_container_create_too_large_is_refused(socket_proxy, base_body):
    padded = {**base_body, "Env": [*base_body["Env"], "PAD=" + "a" * (1 << 20)]}
    assert status(socket_proxy, "POST", "/containers/create", json.dumps(padded).encode()) == 403


def test_sdk_sees_refusals_as_403(socket_proxy):
    import docker

    client = docker.DockerClient(base_url=socket_proxy, version="auto", timeout=30)
    assert client.ping()
    for call in (client.volumes.list, client.networks.list, lambda: client.swarm.reload(),
                 lambda: client.images.build(fileobj=io.BytesIO(b"FROM scratch\n"))):
        with pytest.raises(docker.errors.APIError) as err:
            call()
        assert err.value.status_code == 403
    client.close()


@pytest.mark.slow
def test_what_docker_operator_needs_goes_through(socket_proxy, runner_image, data_dir, docker_client, docker_socket):
    """The DockerOperator sequence (images, create, attach, start, wait, logs, inspect, remove; stop and
    kill on a second container), with the SDK calls the operator itself makes."""
    import docker

    api = docker.APIClient(base_url=socket_proxy, version="auto", timeout=60)
    assert api.ping() and api.version()["ApiVersion"] and api.info()["ServerVersion"]
    assert api.images(name=runner_image)
    assert api.inspect_image(runner_image)["Config"]["Entrypoint"] == ["helical-runner"]

    body = runner_body(api, runner_image, data_dir)
    container = api.create_container(runner_image, command=["info"], user=body["User"],
                                     host_config=body["HostConfig"], labels={"helical.dag_id": "test"})
    try:
        stream = api.attach(container["Id"], stdout=True, stderr=True, stream=True)
        api.start(container["Id"])
        attached = b"".join(stream).decode()
        assert api.wait(container["Id"])["StatusCode"] == 0
        logs = api.logs(container["Id"], stdout=True, stderr=False).decode()
        assert '"name": "gf-12L-38M-i4096"' in logs and '"models"' in attached  # info's model listing
        assert api.inspect_container(container["Id"])["State"]["ExitCode"] == 0
        assert api.containers(all=True, filters={"label": "helical.dag_id=test"})
    finally:
        api.remove_container(container["Id"], force=True)
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(container["Id"])

    # on_kill stops the container; a second one is killed outright. A sleeper needs another entrypoint,
    # which the proxy refuses: it is created on the engine itself, then stopped and killed through the proxy.
    engine = docker.APIClient(base_url=f"unix://{docker_socket}", version="auto", timeout=60)
    sleeper = engine.create_container(runner_image, entrypoint=["python", "-c", "import time; time.sleep(300)"],
                                      host_config=engine.create_host_config(network_mode="none"))
    try:
        api.start(sleeper["Id"])
        api.stop(sleeper["Id"], timeout=1)
        assert api.inspect_container(sleeper["Id"])["State"]["Running"] is False
        api.start(sleeper["Id"])
        api.kill(sleeper["Id"])
        assert api.wait(sleeper["Id"])["StatusCode"] == 137
    finally:
        api.remove_container(sleeper["Id"], force=True)
    api.close()
