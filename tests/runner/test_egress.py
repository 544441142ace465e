"""The build network (runner/egress.py): with ``EASEML_BUILD_EGRESS=proxy`` a ``RUN pip
install`` reaches PyPI through the operator's squid, and nothing else: not a service on the
worker's loopback, not the host's other addresses, not cloud metadata, not a domain off the
allow-list, not the outside world without the proxy. One real build (apt + pip through
squid, then a probe step) answers all of it; the probes print what they reached into the
build log, which is what a developer can read."""

from __future__ import annotations

import http.server
import json
import os
import secrets
import shutil
import socket
import ssl
import threading
import urllib.request
from pathlib import Path

import pytest

from easeml_buildbot.runner import egress
from easeml_buildbot.runner.base import BoundedLog, Limits, RunnerUnavailable
from support import squid
from support.models import DEFAULT_BASE_IMAGE

pytestmark = pytest.mark.docker

ALLOWED = ("pypi.org", "files.pythonhosted.org", "deb.debian.org")
OFF_LIST = "registry.npmjs.org"  # a registry this machine reaches, not on the allow-list


# ----------------------------------------------------------------------- settings

def test_settings_default_to_no_network():
    s = egress.EgressSettings.from_env({})
    assert (s.mode, s.network, s.proxy) == ("none", "none", None)
    assert egress.EgressSettings.from_env({"EASEML_BUILD_EGRESS": "proxy"}).network == egress.DEFAULT_NETWORK


@pytest.mark.parametrize("env, key", [
    ({"EASEML_BUILD_EGRESS": "internet"}, "EASEML_BUILD_EGRESS"),
    ({"EASEML_BUILD_EGRESS": "proxy", "EASEML_BUILD_NETWORK": "host"}, "EASEML_BUILD_NETWORK"),
    ({"EASEML_BUILD_EGRESS": "proxy", "EASEML_BUILD_NETWORK": "bridge"}, "EASEML_BUILD_NETWORK"),
    ({"EASEML_BUILD_EGRESS": "proxy", "EASEML_BUILD_PROXY": "http://u:p@10.0.0.1:3128"}, "EASEML_BUILD_PROXY"),
    ({"EASEML_BUILD_EGRESS": "proxy", "EASEML_BUILD_PROXY": "socks5://10.0.0.1:1080"}, "EASEML_BUILD_PROXY"),
    ({"EASEML_BUILD_PROXY_DOMAINS": "pypi.org,169.254.169.254"}, "EASEML_BUILD_PROXY_DOMAINS"),
    ({"EASEML_BUILD_PROXY_DOMAINS": "pypi.org\nhttp_access allow all"}, "EASEML_BUILD_PROXY_DOMAINS"),
    ({"EASEML_BUILD_PROXY_DOMAINS": "*.example.org"}, "EASEML_BUILD_PROXY_DOMAINS"),
    # the old escape hatch gave RUN steps the worker host's network
    ({"EASEML_BUILD_NETWORK": "default"}, "EASEML_BUILD_NETWORK=default"),
    ({"EASEML_BUILD_NETWORK": "host"}, "EASEML_BUILD_NETWORK=host"),
])
def test_bad_settings_name_the_variable(env, key):
    with pytest.raises(egress.EgressError, match=key):
        egress.EgressSettings.from_env(env)


def test_a_worker_with_a_bad_build_network_refuses_to_build(docker_client, monkeypatch):
    from easeml_buildbot.runner.docker_runner import DockerRunner

    monkeypatch.setenv("EASEML_BUILD_NETWORK", "default")
    with pytest.raises(RunnerUnavailable, match="only through the egress route"):
        DockerRunner(docker_client)


def test_operator_commands_print_the_config_and_the_rules():
    import subprocess
    import sys

    run = lambda *a: subprocess.run([sys.executable, "-m", "easeml_buildbot.runner.egress", *a],  # noqa: E731
                                    capture_output=True, text=True)
    conf = run("squid-conf", "--listen", "172.30.0.1:3128", "--domains", "pypi.org", "--user", "proxy")
    assert conf.returncode == 0 and "acl egress_allowed dstdomain -n pypi.org\n" in conf.stdout
    rules = run("firewall", "--bridge", "easeml-build0", "--listen", "172.30.0.1:3128")
    assert rules.stdout.splitlines() == [
        "iptables -I INPUT -i easeml-build0 -j DROP",
        "iptables -I INPUT -i easeml-build0 -p tcp -d 172.30.0.1 --dport 3128 -j ACCEPT"]
    bad = run("squid-conf", "--listen", "172.30.0.1:3128", "--domains", "pypi.org http_access allow all")
    assert bad.returncode == 2 and "is not a domain name" in bad.stderr


def test_squid_config_allows_only_the_listed_names():
    conf = egress.squid_config(listen="172.30.0.1:3128", domains=["pypi.org", ".pythonhosted.org"],
                               state_dir="/var/lib/easeml-squid", deny_nets=["192.0.2.2/32"])
    lines = conf.splitlines()
    assert "http_port 172.30.0.1:3128" in lines
    assert "acl egress_allowed dstdomain -n pypi.org .pythonhosted.org" in lines
    assert "192.0.2.2/32" in next(ln for ln in lines if ln.startswith("acl egress_denied_nets"))
    access = [ln for ln in lines if ln.startswith("http_access")]
    assert access.index("http_access deny egress_denied_nets") < access.index("http_access allow egress_allowed")
    assert access[-1] == "http_access deny all"


# ------------------------------------------------------------------ against Docker

def test_proxy_route_refuses_a_network_with_a_way_out(docker_client, monkeypatch):
    from easeml_buildbot.runner.docker_runner import DockerRunner

    name = f"easeml-test-open-{secrets.token_hex(4)}"
    net = docker_client.networks.create(name, driver="bridge")  # not --internal
    try:
        monkeypatch.setenv("EASEML_BUILD_EGRESS", "proxy")
        monkeypatch.setenv("EASEML_BUILD_NETWORK", name)
        runner = DockerRunner(docker_client)
        with pytest.raises(RunnerUnavailable, match="not internal"):
            egress.build_route(runner.client, runner.egress)
        monkeypatch.setenv("EASEML_BUILD_NETWORK", name + "-missing")
        with pytest.raises(RunnerUnavailable, match="does not exist"):
            egress.build_route(docker_client, egress.EgressSettings.from_env())
    finally:
        net.remove()


class _Secret:
    """An HTTP server on ``host`` answering every GET with a random token."""

    def __init__(self, host: str) -> None:
        self.token = secrets.token_hex(16)
        token = self.token.encode()

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                self.send_response(200)
                self.end_headers()
                self.wfile.write(token)

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer((host, 0), H)
        self.host, self.port = host, self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def fetch(self) -> str:
        with urllib.request.urlopen(f"http://{self.host}:{self.port}/", timeout=5) as r:
            return r.read().decode()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _docker0_address() -> str | None:
    import fcntl
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            raw = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", b"docker0"))  # SIOCGIFADDR
        except OSError:
            return None
    return socket.inet_ntoa(raw[20:24])


PROBE_PY = r'''
import json, os, socket, urllib.request
T = json.loads({targets!r})
proxy = os.environ.get("https_proxy", "")
opener = urllib.request.build_opener(urllib.request.ProxyHandler({{"http": proxy, "https": proxy}}))
def via_proxy(url):
    try:
        return "REACHED " + opener.open(url, timeout=10).read(200).decode("utf-8", "replace")
    except Exception as e:
        return "blocked " + type(e).__name__ + ": " + str(e)[:120]
def direct(host, port):
    s = socket.socket(); s.settimeout(3)
    try:
        s.connect((host, port)); return "REACHED"
    except ConnectionRefusedError as e:
        return "REACHED the host (refused: its stack answered)"
    except Exception as e:
        return "blocked " + type(e).__name__ + ": " + str(e)[:120]
    finally:
        s.close()
for name, url in T["proxy"].items():
    print("PROBE", name, via_proxy(url), flush=True)
for name, (host, port) in T["direct"].items():
    print("PROBE", name, direct(host, port), flush=True)
print("PROBE docker-socket", "REACHED" if os.path.exists("/var/run/docker.sock") else "blocked: absent")
print("PROBE env", json.dumps(sorted(k for k in os.environ if k.startswith("EASEML") or "CANARY" in k)))
print("PROBE proxy-env", proxy)
'''


@pytest.fixture(scope="module")
def route(docker_client):
    reason = squid.unavailable()
    if reason:
        pytest.skip(reason)
    with squid.SquidEgress(docker_client, domains=ALLOWED) as r:
        yield r


def test_pip_install_works_and_nothing_else_is_reachable(docker_client, route, tag, tmp_path, monkeypatch):
    from easeml_buildbot.runner.docker_runner import DockerRunner

    servers = [_Secret("127.0.0.1"), _Secret(route.gateway)]
    d0 = _docker0_address()
    if d0:
        servers.append(_Secret(d0))
    try:
        loop, gw = servers[0], servers[1]
        # negative controls: each secret is there to be had from the host, and the off-list
        # domain is reachable from the host without the proxy
        assert all(s.fetch() == s.token for s in servers)
        ctx = ssl.create_default_context(cafile=str(squid.HOST_CA_BUNDLE))
        with urllib.request.urlopen(f"https://{OFF_LIST}/", timeout=20, context=ctx) as r:
            assert r.status == 200
        pypi_ip = socket.gethostbyname("pypi.org")
        targets = {
            "proxy": {
                "loopback": f"http://127.0.0.1:{loop.port}/",
                "localhost": f"http://localhost:{loop.port}/",
                "loopback-connect": f"https://127.0.0.1:{loop.port}/",
                "gateway": f"http://{gw.host}:{gw.port}/",
                "metadata": "http://169.254.169.254/latest/meta-data/",
                "off-list-domain": f"https://{OFF_LIST}/",
                "ip-literal": f"https://{pypi_ip}/simple/",
                **({"docker0": f"http://{d0}:{servers[2].port}/"} if d0 else {}),
            },
            "direct": {
                "gateway-direct": [gw.host, gw.port],
                "proxy-host-other-port": [route.gateway, 22],
                "docker-tcp": [route.gateway, 2375],
                "metadata-direct": ["169.254.169.254", 80],
                "pypi-direct": [pypi_ip, 443],
                **({"docker0-direct": [d0, servers[2].port]} if d0 else {}),
            },
        }
        (tmp_path / "probe.py").write_text(PROBE_PY.format(targets=json.dumps(targets)))
        shutil.copy(squid.HOST_CA_BUNDLE, tmp_path / "extra-ca.pem")  # the intercepting proxy's CA
        (tmp_path / "Dockerfile").write_text(
            f"FROM {DEFAULT_BASE_IMAGE}\n"
            "RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-pip "
            ">/dev/null && rm -rf /var/lib/apt/lists/*\n"
            "COPY extra-ca.pem probe.py /egress/\n"
            "RUN PIP_CERT=/egress/extra-ca.pem pip install -q --no-cache-dir --break-system-packages "
            "six==1.16.0 && python3 -c 'import six; print(\"INSTALLED six\", six.__version__)'\n"
            "RUN python3 /egress/probe.py\n")
        for k, v in route.env.items():
            monkeypatch.setenv(k, v)
        # the worker's own environment never enters a build
        monkeypatch.setenv("HTTPS_PROXY", "http://worker-canary.invalid:1")
        monkeypatch.setenv("EASEML_CANARY_SECRET", "worker-canary")
        runner = DockerRunner(docker_client)
        log = BoundedLog(1 << 20)
        ref, steps = runner.build(tmp_path, tag=tag, model={}, limits=Limits(build_timeout=600),
                                  log_out=log)
        runner._remove_images([ref, *steps])
        text = log.getvalue()
    finally:
        for s in servers:
            s.close()
    print("\n".join(ln for ln in text.splitlines() if ln.startswith(("PROBE", "INSTALLED"))))
    assert "INSTALLED six 1.16.0" in text, text[-3000:]
    probes = {ln.split()[1]: ln.split(None, 2)[2] for ln in text.splitlines()
              if ln.startswith("PROBE ") and len(ln.split()) > 2}
    expected = [*targets["proxy"], *targets["direct"], "docker-socket"]
    assert set(expected) <= set(probes), text[-3000:]
    reached = {k: v for k, v in probes.items() if k in expected and not v.startswith("blocked")}
    assert reached == {}, text[-3000:]
    for s in servers:
        assert s.token not in text
    assert probes["proxy-env"] == route.proxy_url
    assert probes["env"] == "[]"
    assert "worker-canary" not in text
    access = route.access_log()
    assert "TCP_TUNNEL/200" in access and "CONNECT files.pythonhosted.org:443" in access, access
    assert f"TCP_DENIED/403" in access and f"CONNECT {OFF_LIST}:443" in access, access
