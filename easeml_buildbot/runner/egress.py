"""The build's only way out: an operator-controlled egress route for ``RUN`` steps.

By default a model image builds with no network at all (``network_mode="none"``). A real
repository installs its ``requirements.txt`` in a ``RUN`` step, so the operator can enable
an egress route with ``EASEML_BUILD_EGRESS=proxy``:

* builds run on a dedicated Docker network created with ``--internal`` (no route out of
  the host) and with inter-container traffic disabled, so two builds cannot talk;
* the only thing a build can reach on it is an HTTP(S) proxy (Debian's ``squid``) that
  allows ``CONNECT``/``GET`` to the domains of ``EASEML_BUILD_PROXY_DOMAINS`` only and never
  to loopback, private, link-local (cloud metadata) or the host's own addresses;
* the host side of an internal bridge still accepts packets to every host address (the
  kernel's INPUT chain, not Docker's FORWARD rules); :func:`firewall_rules` are the two
  ``iptables`` rules that leave only the proxy's port open on the bridge.

The worker passes the proxy to the build as the predefined build args ``HTTP(S)_PROXY``
(which Docker hands to ``RUN`` without an ``ARG`` line and keeps out of the image history);
nothing else of the worker's environment enters a build, and a repository cannot choose
the network: :func:`build_route` refuses a network that is not internal, and a build that
ignores the proxy variables simply has no route.

Operator settings (worker environment, or the ``[env]`` table of the worker's
``easeml-worker.toml``), see docs/operator-guide.md "Build network":

=============================  ==========================================================
``EASEML_BUILD_EGRESS``        ``none`` (default: no network) or ``proxy``
``EASEML_BUILD_NETWORK``       the internal network (``proxy``; default ``easeml-build``);
                               with ``none`` only ``none`` (anything else is refused)
``EASEML_BUILD_PROXY``         the proxy as builds see it, ``http://HOST:PORT``
                               (default: the network's gateway, port 3128)
``EASEML_BUILD_PROXY_DOMAINS`` the allow-list the proxy enforces (:func:`squid_config`),
                               default ``pypi.org,files.pythonhosted.org``
=============================  ==========================================================
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

MODES = ("none", "proxy")
DEFAULT_NETWORK = "easeml-build"
DEFAULT_DOMAINS = ("pypi.org", "files.pythonhosted.org")
DEFAULT_PROXY_PORT = 3128
#: Destinations the proxy refuses even when an allowed name resolves to them (DNS that
#: points inside); the host's own addresses are added by :func:`squid_config`'s caller.
PRIVATE_NETS = ("127.0.0.0/8", "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "169.254.0.0/16",
                "172.16.0.0/12", "192.168.0.0/16", "224.0.0.0/4", "240.0.0.0/4",
                "::1/128", "::/128", "fc00::/7", "fe80::/10", "ff00::/8")
_DOMAIN = re.compile(r"^\.?(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,62}$")


class EgressError(ValueError):
    """A bad egress setting (names the variable)."""


def parse_domains(value: str | Iterable[str], *, source: str = "EASEML_BUILD_PROXY_DOMAINS"
                  ) -> tuple[str, ...]:
    """``"pypi.org, .pythonhosted.org"`` -> validated, lower-cased names (a leading dot also
    allows subdomains, as in squid). IP addresses and wildcards are refused: the list names
    services, and a name is all the proxy is allowed to connect by."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[str] = []
    for raw in items:
        name = str(raw).strip().lower()
        if not name:
            continue
        if not _DOMAIN.match(name) or len(name) > 253:
            raise EgressError(f"{source}: {raw.strip()!r} is not a domain name "
                              "(e.g. pypi.org, or .example.org for its subdomains)")
        out.append(name)
    if not out:
        raise EgressError(f"{source}: no domain given")
    return tuple(dict.fromkeys(out))


def _parse_proxy(value: str, source: str = "EASEML_BUILD_PROXY") -> tuple[str, int]:
    parts = urlsplit(value.strip())
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "http" or not parts.hostname or port is None or parts.username \
            or parts.password or parts.path not in ("", "/") or parts.query:
        raise EgressError(f"{source}: {value!r} is not http://HOST:PORT (the proxy's address "
                          "on the build network, no credentials)")
    return parts.hostname, port


@dataclass(frozen=True)
class EgressSettings:
    """The operator's build-network settings (module docstring)."""

    mode: str = "none"
    network: str = "none"
    proxy: str | None = None
    domains: tuple[str, ...] = DEFAULT_DOMAINS

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise EgressError(f"EASEML_BUILD_EGRESS: {self.mode!r} is not one of {', '.join(MODES)}")
        if self.mode == "none" and self.network != "none":
            # the old escape hatch (EASEML_BUILD_NETWORK=default) gave RUN steps the worker
            # host's network: its loopback services, the LAN, cloud metadata
            raise EgressError(f"EASEML_BUILD_NETWORK={self.network}: builds get a network only "
                              "through the egress route (set EASEML_BUILD_EGRESS=proxy and name "
                              "its internal network; docs/operator-guide.md, 'Build network')")
        if self.mode == "proxy" and (self.network in ("none", "host", "bridge", "default")
                                     or self.network.startswith("container:")):
            raise EgressError(f"EASEML_BUILD_NETWORK: {self.network!r} cannot carry the egress "
                              "route (name the internal network the proxy listens on)")
        if self.proxy is not None:
            _parse_proxy(self.proxy)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "EgressSettings":
        env = os.environ if env is None else env
        mode = (env.get("EASEML_BUILD_EGRESS") or "none").strip().lower()
        network = (env.get("EASEML_BUILD_NETWORK") or "").strip()
        proxy = (env.get("EASEML_BUILD_PROXY") or "").strip() or None
        domains = parse_domains(env.get("EASEML_BUILD_PROXY_DOMAINS") or ",".join(DEFAULT_DOMAINS))
        default = DEFAULT_NETWORK if mode == "proxy" else "none"
        return cls(mode, network or default, proxy if mode == "proxy" else None, domains)


@dataclass(frozen=True)
class BuildRoute:
    """What a build gets: the Docker network mode and the build args naming the proxy."""

    network_mode: str
    buildargs: dict[str, str]


def proxy_buildargs(proxy: str) -> dict[str, str]:
    """The predefined proxy build args (both spellings: pip/requests read the lower-case
    ones, other tools the upper-case ones). ``NO_PROXY`` is empty: nothing is direct."""
    return {"HTTP_PROXY": proxy, "HTTPS_PROXY": proxy, "http_proxy": proxy, "https_proxy": proxy,
            "NO_PROXY": "", "no_proxy": ""}


def build_route(client: Any, settings: EgressSettings) -> BuildRoute:
    """The route for one build, checked against the daemon: with ``proxy`` the network must
    exist, be ``--internal`` and hold the proxy's address. Raises
    :class:`~easeml_buildbot.runner.base.RunnerUnavailable` (an operator problem, never the
    model's) instead of building with more network than configured."""
    from easeml_buildbot.runner.base import RunnerUnavailable

    if settings.mode == "none":
        return BuildRoute(settings.network, {})
    import docker.errors

    where = f"EASEML_BUILD_EGRESS=proxy: network {settings.network!r}"
    try:
        attrs = client.api.inspect_network(settings.network)
    except docker.errors.NotFound:
        raise RunnerUnavailable(f"{where} does not exist (docs/operator-guide.md, "
                                "'Build network', creates it)") from None
    if not attrs.get("Internal"):
        raise RunnerUnavailable(f"{where} is not internal: it would give builds the host's "
                                "network (create it with `docker network create --internal`)")
    subnets = [c for c in (attrs.get("IPAM") or {}).get("Config") or [] if c.get("Subnet")]
    proxy = settings.proxy
    if proxy is None:
        gateway = next((c.get("Gateway") for c in subnets if c.get("Gateway")), None)
        if not gateway:
            raise RunnerUnavailable(f"{where} has no gateway address; set EASEML_BUILD_PROXY")
        proxy = f"http://{gateway}:{DEFAULT_PROXY_PORT}"
    host, _port = _parse_proxy(proxy)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None  # a container name on the network: Docker's DNS resolves it there
    if ip is not None and not any(ip in ipaddress.ip_network(c["Subnet"], strict=False)
                                  for c in subnets):
        raise RunnerUnavailable(f"EASEML_BUILD_PROXY: {host} is not on network "
                                f"{settings.network!r} ({', '.join(c['Subnet'] for c in subnets)}): "
                                "builds could not reach it")
    return BuildRoute(settings.network, proxy_buildargs(proxy))


# ------------------------------------------------------------------ operator side

def create_network(client: Any, name: str = DEFAULT_NETWORK, *, bridge: str | None = None,
                   subnet: str | None = None) -> dict[str, Any]:
    """Create the internal build network (no route out, no inter-container traffic) and
    return its ``docker network inspect`` document. ``bridge`` fixes the host interface's
    name (at most 15 characters) so :func:`firewall_rules` survive re-creation."""
    import docker.types

    options = {"com.docker.network.bridge.enable_icc": "false",
               "com.docker.network.bridge.enable_ip_masquerade": "false"}
    if bridge:
        if len(bridge) > 15 or not re.match(r"^[A-Za-z0-9_.-]+$", bridge):
            raise EgressError(f"bridge name {bridge!r}: at most 15 letters, digits, '_.-'")
        options["com.docker.network.bridge.name"] = bridge
    ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=subnet)]) if subnet else None
    net = client.networks.create(name, driver="bridge", internal=True, options=options, ipam=ipam,
                                 labels={"easeml.egress": "build"}, check_duplicate=True)
    return client.api.inspect_network(net.id)


def bridge_of(network: Mapping[str, Any]) -> str:
    """The host interface of a bridge network (its fixed name, else ``br-<id[:12]>``)."""
    return (network.get("Options") or {}).get("com.docker.network.bridge.name") \
        or f"br-{network['Id'][:12]}"


def gateway_of(network: Mapping[str, Any]) -> str:
    for c in (network.get("IPAM") or {}).get("Config") or []:
        if c.get("Gateway"):
            return str(c["Gateway"])
    raise EgressError(f"network {network.get('Name')!r} has no gateway address")


def firewall_rules(bridge: str, proxy_ip: str, proxy_port: int) -> list[list[str]]:
    """``iptables`` rules (arguments after ``iptables``, to insert in this order with
    ``-I``) that drop every packet from the build bridge to the host except to the proxy:
    an internal network still reaches all host addresses (INPUT is not Docker's FORWARD)."""
    return [["-I", "INPUT", "-i", bridge, "-j", "DROP"],
            ["-I", "INPUT", "-i", bridge, "-p", "tcp", "-d", proxy_ip, "--dport", str(proxy_port),
             "-j", "ACCEPT"]]


def squid_config(*, listen: str, domains: Sequence[str], state_dir: str,
                 deny_nets: Sequence[str] = (), user: str | None = None) -> str:
    """A complete squid.conf for the route: listen on ``listen`` (``IP:PORT`` on the build
    network) only, no disk cache, ``CONNECT`` to port 443 and ``GET`` to port 80/443 of the
    allowed ``domains`` (matched by name, ``-n``: no reverse lookups, so an IP literal never
    matches), never to :data:`PRIVATE_NETS` or ``deny_nets`` (the host's own addresses), and
    logs/pid under ``state_dir``."""
    names = parse_domains(domains, source="domains")
    if user is not None and not re.match(r"^[a-z_][a-z0-9_-]{0,31}$", user):
        raise EgressError(f"user: {user!r} is not a user name")
    host, _, port = listen.rpartition(":")
    ipaddress.ip_address(host.strip("[]"))
    if not port.isdigit():
        raise EgressError(f"listen: {listen!r} is not IP:PORT")
    nets = [str(ipaddress.ip_network(n, strict=False)) for n in (*PRIVATE_NETS, *deny_nets)]
    d = state_dir.rstrip("/")
    lines = [
        "# easeml build egress proxy (generated by easeml_buildbot.runner.egress.squid_config)",
        f"http_port {listen}",
        *([f"cache_effective_user {user}"] if user else []),
        f"pid_filename {d}/squid.pid",
        f"access_log stdio:{d}/access.log",
        f"cache_log {d}/cache.log",
        f"coredump_dir {d}",
        "cache deny all",
        "cache_mem 8 MB",
        "pinger_enable off",
        "shutdown_lifetime 1 seconds",
        "via off",
        "forwarded_for delete",
        "acl SSL_ports port 443",
        "acl Safe_ports port 80 443",
        "acl CONNECT method CONNECT",
        f"acl egress_allowed dstdomain -n {' '.join(names)}",
        f"acl egress_denied_nets dst {' '.join(nets)}",
        "http_access deny !Safe_ports",
        "http_access deny CONNECT !SSL_ports",
        "http_access deny egress_denied_nets",
        "http_access allow egress_allowed",
        "http_access deny all",
        "icp_access deny all",
        "htcp_access deny all",
        "snmp_access deny all",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m easeml_buildbot.runner.egress squid-conf|firewall ...``: what an operator
    runs once per Docker host (docs/operator-guide.md, "Build network")."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m easeml_buildbot.runner.egress", description=main.__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("squid-conf", help="print a squid.conf for the build egress proxy")
    p.add_argument("--listen", required=True, help="IP:PORT on the build network (its gateway)")
    p.add_argument("--state-dir", default="/var/lib/easeml-squid", help="logs and pid file")
    p.add_argument("--domains", default=None,
                   help="allow-list (default: $EASEML_BUILD_PROXY_DOMAINS or pypi.org,files.pythonhosted.org)")
    p.add_argument("--deny", action="append", default=[], metavar="NET",
                   help="more destinations to refuse, e.g. the host's public address (repeatable)")
    p.add_argument("--user", default=None, help="cache_effective_user (Debian: proxy)")
    f = sub.add_parser("firewall", help="print the iptables commands that close the bridge to the host")
    f.add_argument("--bridge", required=True, help="host interface of the build network")
    f.add_argument("--listen", required=True, help="the proxy's IP:PORT on that network")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "squid-conf":
            domains = args.domains or os.environ.get("EASEML_BUILD_PROXY_DOMAINS") or ",".join(DEFAULT_DOMAINS)
            print(squid_config(listen=args.listen, domains=parse_domains(domains), state_dir=args.state_dir,
                               deny_nets=args.deny, user=args.user), end="")
        else:
            host, _, port = args.listen.rpartition(":")
            ipaddress.ip_address(host)
            for rule in firewall_rules(args.bridge, host, int(port)):
                print("iptables " + " ".join(rule))
    except ValueError as exc:
        ap.error(str(exc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
