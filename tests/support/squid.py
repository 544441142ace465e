"""A real egress route for builds: an internal Docker network, Debian's squid on its
gateway address (free port, own config and state directory) and the two iptables rules
that leave only squid's port open from the bridge to the host. Everything is made with
runner/egress.py, the code an operator uses, and removed again on stop.

    with SquidEgress(domains=["pypi.org", "files.pythonhosted.org"]) as route:
        route.env            # EASEML_BUILD_EGRESS/NETWORK/PROXY for a worker or DockerRunner
        route.gateway        # the host's address on the build network
        route.access_log()   # squid's access log (one line per request it answered)

Needs root (iptables, squid dropping to the ``proxy`` user), squid (scripts/setup.sh) and a
Docker daemon; :func:`unavailable` says why not, for a skip.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from easeml_buildbot.runner import egress

HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def unavailable() -> str | None:
    if shutil.which("squid") is None:
        return "squid is not installed (scripts/setup.sh installs it)"
    if shutil.which("iptables") is None:
        return "iptables is not installed (the egress firewall needs it)"
    if os.geteuid() != 0:
        return "the egress route needs root (iptables rules on the build bridge)"
    return None


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class SquidEgress:
    def __init__(self, client: Any = None, *, domains: list[str] | tuple[str, ...] = egress.DEFAULT_DOMAINS,
                 start_timeout: float = 30) -> None:
        import docker

        self.client = client or docker.from_env(timeout=120)
        self.domains = tuple(domains)
        token = uuid.uuid4().hex[:10]
        self.network_name = f"easeml-test-egress-{token}"
        self.bridge = f"eeg{token}"  # 13 characters: an interface name holds 15
        self.start_timeout = start_timeout
        self.state_dir: Path | None = None
        self.proc: subprocess.Popen | None = None
        self._rules: list[list[str]] = []
        self._network_id: str | None = None

    # -- lifecycle ------------------------------------------------------------------
    def __enter__(self) -> "SquidEgress":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> None:
        net = egress.create_network(self.client, self.network_name, bridge=self.bridge)
        self._network_id = net["Id"]
        self.gateway = egress.gateway_of(net)
        self.subnet = net["IPAM"]["Config"][0]["Subnet"]
        self.port = _free_port(self.gateway)
        self.proxy_url = f"http://{self.gateway}:{self.port}"
        # squid drops root for the "proxy" user, which must own its state directory
        self.state_dir = Path(tempfile.mkdtemp(prefix="easeml-squid-"))
        import pwd

        user = pwd.getpwnam("proxy") if _has_user("proxy") else None
        if user is not None:
            os.chown(self.state_dir, user.pw_uid, user.pw_gid)
        conf = self.state_dir / "squid.conf"
        conf.write_text(egress.squid_config(listen=f"{self.gateway}:{self.port}", domains=self.domains,
                                            state_dir=str(self.state_dir),
                                            user="proxy" if user else None))
        parse = subprocess.run(["squid", "-k", "parse", "-f", str(conf)], capture_output=True, text=True)
        if parse.returncode != 0:
            raise RuntimeError(f"squid -k parse {conf}: {parse.stderr[-2000:]}")
        with open(self.state_dir / "squid.out", "ab") as out:
            self.proc = subprocess.Popen(["squid", "-N", "-f", str(conf)], stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"squid exited with {self.proc.returncode}: {self.log()[-2000:]}")
            try:
                with socket.create_connection((self.gateway, self.port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"squid did not listen on {self.proxy_url}: {self.log()[-2000:]}")
                time.sleep(0.1)
        for rule in egress.firewall_rules(self.bridge, self.gateway, self.port):
            subprocess.run(["iptables", "-w", "5", *rule], check=True, capture_output=True)
            self._rules.append(rule)

    def stop(self) -> None:
        for rule in reversed(self._rules):
            delete = ["-D" if a == "-I" else a for a in rule]
            subprocess.run(["iptables", "-w", "5", *delete], capture_output=True)
        self._rules.clear()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # our child, by pid
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._network_id is not None:
            try:
                self.client.networks.get(self._network_id).remove()
            except Exception:  # noqa: BLE001 - a build container may still hold it briefly
                time.sleep(1)
                try:
                    self.client.networks.get(self._network_id).remove()
                except Exception:  # noqa: BLE001
                    pass
            self._network_id = None
        if self.state_dir is not None:
            shutil.rmtree(self.state_dir, ignore_errors=True)
            self.state_dir = None

    # -- views ----------------------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        """The worker settings that route builds through this proxy."""
        return {"EASEML_BUILD_EGRESS": "proxy", "EASEML_BUILD_NETWORK": self.network_name,
                "EASEML_BUILD_PROXY": self.proxy_url,
                "EASEML_BUILD_PROXY_DOMAINS": ",".join(self.domains)}

    def access_log(self) -> str:
        p = self.state_dir / "access.log" if self.state_dir else None
        return p.read_text(errors="replace") if p and p.exists() else ""

    def log(self) -> str:
        if not self.state_dir:
            return ""
        return "".join((self.state_dir / n).read_text(errors="replace")
                       for n in ("squid.out", "cache.log") if (self.state_dir / n).exists())


def _has_user(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False
