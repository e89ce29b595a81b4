"""Issue 20 on the running stack: a runner container, started as the DAG starts runners, reaches S3 and the
Pushgateway and nothing else of the stack; the socket proxy the workers use refuses every escape; the
broker refuses a client without its password."""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request

import pytest

from conftest import MODE

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(MODE != "docker", reason="runner containers need the Docker engine (docker mode)")]

# Runs inside the runner container: TCP connect to each target, HTTP GET where a URL is given.
PROBE = r"""
import json, socket, sys, urllib.request
out = {}
for name, host, port, url in json.loads(sys.argv[1]):
    try:
        socket.create_connection((host, port), timeout=3).close()
        state = "open"
        if url:
            state = "http %d" % urllib.request.urlopen(url, timeout=5).status
    except OSError as err:
        state = type(err).__name__
    out["%s %s:%d" % (name, host, port)] = state
print(json.dumps(out))
"""


def host_addresses() -> list[str]:
    """This host's own addresses a container might try: loopback and the address of its default route."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.254", 9))  # no packet is sent: this only picks the outgoing address
            routed = s.getsockname()[0]
        except OSError:
            routed = "127.0.0.1"
    return sorted({"127.0.0.1", routed})


def test_a_runner_container_reaches_s3_and_the_pushgateway_only(stack, monkeypatch):
    import docker

    from helical_lib import profiles
    from helical_lib.runner import _HardenedClient, container_kwargs
    from helical_lib.settings import Settings

    settings = Settings.from_env(stack.env)
    kwargs = container_kwargs(profiles.get("cpu-small"), settings, dag_id="helical_finetune", task_id="probe",
                              run_id="security-probe", try_number=1,
                              s3_env={"S3_ENDPOINT_URL": stack.s3_url, "AWS_DEFAULT_REGION": "us-east-1"})
    forbidden = {"socket proxy": stack.ports["proxy"], "redis": stack.ports["redis"],
                 "postgres": stack.ports["postgres"], "airflow api": stack.ports["api"]}
    targets = [(name, host, port, "") for name, port in forbidden.items()
               for host in [stack.runner_host, *host_addresses()]]
    targets += [("s3", stack.runner_host, stack.ports["s3"], f"{stack.s3_url}/helical"),
                ("pushgateway", stack.runner_host, stack.ports["pushgateway"], f"{stack.pushgateway_url}/-/healthy")]

    # Created on the engine itself with the DAG's own arguments: same image, user, network, mounts, limits,
    # and _HardenedClient's dropped capabilities; only the entrypoint differs (the proxy refuses that, so
    # this one container can't go through it), to run the probe instead of helical-runner.
    engine = docker.APIClient(base_url=os.environ["HELICAL_E2E_ENGINE"], version="auto", timeout=60)
    host_config = _HardenedClient(engine).create_host_config(
        mounts=kwargs["mounts"], network_mode=kwargs["network_mode"], mem_limit=kwargs["mem_limit"])
    container = engine.create_container(kwargs["image"], entrypoint=["python", "-c", PROBE],
                                        command=[json.dumps(targets)], user=kwargs["user"],
                                        environment=kwargs["environment"], host_config=host_config,
                                        labels={**kwargs["labels"], "task_id": "security-probe"})
    try:
        engine.start(container["Id"])
        assert engine.wait(container["Id"], timeout=300)["StatusCode"] == 0, engine.logs(container["Id"])
        seen = json.loads(engine.logs(container["Id"], stderr=False).decode().strip().splitlines()[-1])
        inspected = engine.inspect_container(container["Id"])
    finally:
        engine.remove_container(container["Id"], force=True)
    assert inspected["HostConfig"]["NetworkMode"] == stack.runner_network and inspected["Config"]["User"] == "50000:0"
    assert inspected["HostConfig"]["CapDrop"] == ["ALL"]
    reached = {target: state for target, state in seen.items() if state == "open" or state.startswith("http")}
    assert set(reached) == {f"s3 {stack.runner_host}:{stack.ports['s3']}",
                            f"pushgateway {stack.runner_host}:{stack.ports['pushgateway']}"}, seen
    assert all(state == "http 200" for state in reached.values()), reached


def _create(stack, body: str) -> int:
    url = stack.docker_url.replace("tcp://", "http://") + "/v1.47/containers/create"
    request = urllib.request.Request(url, data=body.encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_the_workers_proxy_refuses_the_escape_and_its_disguises(stack):
    """What the attacker sent from a runner (a root container binding the host's /), and the disguises
    that got past the old regular expressions, sent from the worker's side to the proxy the DAGs use."""
    data = str(stack.data_dir)
    good = {"Image": "helical-runner:cpu", "User": "50000:0", "Cmd": ["info"],
            "HostConfig": {"NetworkMode": stack.runner_network, "CapDrop": ["ALL"], "SecurityOpt": ["no-new-privileges"],
                           "Mounts": [{"Type": "bind", "Source": data, "Target": "/data", "ReadOnly": True}]}}
    host = json.dumps(good["HostConfig"])[1:-1]
    rest = json.dumps({k: v for k, v in good.items() if k != "HostConfig"})[1:-1]
    escapes = {
        "root with the host's /": json.dumps({**good, "User": "0:0", "HostConfig": {
            **good["HostConfig"], "Mounts": [{"Type": "bind", "Source": "/", "Target": "/host"}]}}),
        "privileged, tab": "{" + rest + ', "HostConfig": {' + host + ', "Privileged":\ttrue}}',
        "privileged, escaped key": "{" + rest + ', "HostConfig": {' + host + ', "Privil\\u0065ged": true}}',
        "privileged, lower case": "{" + rest + ', "HostConfig": {' + host + ', "privileged": true}}',
        "host network, duplicate key": "{" + rest + ', "HostConfig": {' + host + ', "NetworkMode": "host"}}',
        "host pid": "{" + rest + ', "HostConfig": {' + host + ', "PidMode": "host"}}',
    }
    assert {name: _create(stack, body) for name, body in escapes.items()} == {name: 403 for name in escapes}


def test_redis_refuses_a_client_without_the_password(stack):
    import redis

    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=stack.ports["redis"], socket_timeout=5).ping()
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=stack.ports["redis"], password="guess", socket_timeout=5).ping()
    assert redis.Redis(host="127.0.0.1", port=stack.ports["redis"], password=stack.redis_password,
                       socket_timeout=5).ping()
