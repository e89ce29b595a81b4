"""docker/socket-proxy/haproxy.cfg, run by Debian's haproxy in front of a real Docker engine: the calls
Airflow's DockerOperator makes go through; everything that could take over the host answers 403."""

from __future__ import annotations

import io
import subprocess
import urllib.error
import urllib.request

import pytest

from conftest import REPO

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


@pytest.mark.parametrize("host_config", [
    '{"Privileged": true}',
    '{"PidMode": "host"}',
    '{"Binds": ["/var/run/docker.sock:/var/run/docker.sock"]}',
], ids=["privileged", "host-pid", "socket-mount"])
def test_container_create_refuses_escalation(socket_proxy, host_config):
    body = f'{{"Image": "helical-runner:cpu", "HostConfig": {host_config}}}'.encode()
    assert status(socket_proxy, "POST", "/containers/create", body) == 403


def test_container_create_too_large_to_inspect_is_refused(socket_proxy):
    padding = "a" * 70_000  # past what the proxy buffers: the escalation behind it would go unseen
    body = f'{{"Image": "helical-runner:cpu", "Env": ["PAD={padding}"], "HostConfig": {{"Privileged": true}}}}'
    assert status(socket_proxy, "POST", "/containers/create", body.encode()) == 403


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
def test_what_docker_operator_needs_goes_through(socket_proxy, runner_image, data_dir, docker_client):
    """The DockerOperator sequence (images, create, attach, start, wait, logs, inspect, remove; stop and
    kill on a second container), with the SDK calls the operator itself makes."""
    import docker

    api = docker.APIClient(base_url=socket_proxy, version="auto", timeout=60)
    assert api.ping() and api.version()["ApiVersion"] and api.info()["ServerVersion"]
    assert api.images(name=runner_image)
    assert api.inspect_image(runner_image)["Config"]["Entrypoint"] == ["helical-runner"]

    host_config = api.create_host_config(
        network_mode="none", mounts=[docker.types.Mount("/data", str(data_dir), type="bind")],
        mem_limit="2g", cap_drop=["ALL"], security_opt=["no-new-privileges"])
    container = api.create_container(runner_image, command=["info"], host_config=host_config,
                                     labels={"helical.dag_id": "test", "helical.task_id": "info"})
    try:
        stream = api.attach(container["Id"], stdout=True, stderr=True, stream=True)
        api.start(container["Id"])
        attached = b"".join(stream).decode()
        assert api.wait(container["Id"])["StatusCode"] == 0
        logs = api.logs(container["Id"], stdout=True, stderr=False).decode()
        assert '"model": "gf-12L-38M-i4096"' in logs and '"model"' in attached
        assert api.inspect_container(container["Id"])["State"]["ExitCode"] == 0
        assert api.containers(all=True, filters={"label": "helical.dag_id=test"})
    finally:
        api.remove_container(container["Id"], force=True)
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(container["Id"])

    # on_kill stops the container; a second one is killed outright
    sleeper = api.create_container(runner_image, entrypoint=["python", "-c", "import time; time.sleep(300)"],
                                   host_config=api.create_host_config(network_mode="none"))
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
