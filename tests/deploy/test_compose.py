"""docker-compose.yml validates with a real compose implementation, every variable it reads
is documented in .env.example, and the names it passes line up with the master's settings."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from deploy.helpers import ROOT, compose_command
from easeml_buildbot.master.settings import Settings

COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"


@pytest.fixture
def compose(tmp_path):
    cmd = compose_command()
    if cmd is None:
        reason = "no compose implementation (scripts/setup.sh installs Debian's docker-compose)"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(COMPOSE, project / "docker-compose.yml")

    def run(env_text: str, *args: str) -> subprocess.CompletedProcess[str]:
        (project / ".env").write_text(env_text)
        return subprocess.run([*cmd, "--project-directory", str(project), "-f",
                               str(project / "docker-compose.yml"), *args],
                              capture_output=True, text=True, timeout=120, cwd=project)

    return run


def _config(compose, env_text: str, *profile: str) -> dict:
    r = compose(env_text, *profile, "config")
    assert r.returncode == 0, r.stderr
    return yaml.safe_load(r.stdout)


def test_config_validates_with_the_example_env(compose):
    cfg = _config(compose, ENV_EXAMPLE.read_text())
    # Compose v1 prints profiled services too; v2 only the active ones.
    default = {n for n, s in cfg["services"].items() if not s.get("profiles")}
    assert default == {"postgres", "master", "worker"}
    dind = _config(compose, ENV_EXAMPLE.read_text(), "--profile", "dind")
    in_dind = {n for n, s in dind["services"].items() if s.get("profiles", ["dind"]) == ["dind"]}
    assert in_dind == {"postgres", "master", "worker", "worker-dind", "dind"}
    cluster = _config(compose, ENV_EXAMPLE.read_text(), "--profile", "cluster")
    in_cluster = {n for n, s in cluster["services"].items() if s.get("profiles", ["cluster"]) == ["cluster"]}
    assert in_cluster == {"postgres", "master", "worker", "crossbar", "master-2", "worker-2"}
    services = {**dind["services"], **cluster["services"]}
    for name, svc in services.items():
        assert svc.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    # Scalable workers: no fixed container name, no host port.
    for name in ("worker", "worker-dind", "worker-2"):
        assert "container_name" not in services[name] and not services[name].get("ports")
    # The second master is the first one's configuration on its own state volume and ports,
    # after the router; its workers attach to it.
    m1, m2 = cluster["services"]["master"], cluster["services"]["master-2"]
    assert m2["environment"] == m1["environment"] and m2["image"] == m1["image"]
    assert m1["environment"]["EASEML_MQ_REALM"] == "realm1"
    assert m2["depends_on"]["crossbar"]["condition"] == "service_healthy"
    assert cluster["services"]["worker-2"]["environment"]["EASEML_WORKER_MASTER"] == "master-2:9989"
    assert cluster["services"]["crossbar"]["build"]["args"]["BASE_IMAGE"] == "easeml/python:bookworm"
    # Images are built from the locally made base image, never pulled for master/worker.
    for name in ("master", "worker"):
        build = cfg["services"][name]["build"]
        assert build["args"]["BASE_IMAGE"] == "easeml/python:bookworm"
        assert Path(build["dockerfile"]).name == "Dockerfile"
    # Workers start once the master is healthy, the master once PostgreSQL is.
    assert cfg["services"]["master"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert cfg["services"]["worker"]["depends_on"]["master"]["condition"] == "service_healthy"
    vols = cfg["services"]["master"]["volumes"]
    assert any(str(v.get("target") if isinstance(v, dict) else v.split(":")[1]) == "/var/lib/buildbot" for v in vols)


def test_missing_secret_is_refused_by_name(compose):
    env = "\n".join(line for line in ENV_EXAMPLE.read_text().splitlines()
                    if not line.startswith("POSTGRES_PASSWORD="))
    r = compose(env, "config")
    assert r.returncode != 0 and "POSTGRES_PASSWORD" in r.stderr


def test_every_variable_is_documented_in_env_example():
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE.read_text()))
    documented = set(re.findall(r"^#?([A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), re.MULTILINE))
    assert used, "no variables found"
    assert used <= documented, f"not in .env.example: {sorted(used - documented)}"
    assert documented <= used, f"documented but unused: {sorted(documented - used)}"


def test_master_environment_is_understood_by_the_settings(compose):
    env = ENV_EXAMPLE.read_text() + (
        "\nEASEML_GITHUB_APP_ID=12345\nEASEML_GITHUB_WEBHOOK_SECRET=hook-secret\n"
        "POSTGRES_PASSWORD=s3cret\nEASEML_SMTP_HOST=mail.example.org\n"
        "EASEML_ALLOWED_EMAIL_DOMAINS=example.org,example.com\n"
        "EASEML_ADMIN_USER=ops\nEASEML_ADMIN_PASSWORD=ui-secret\n")
    cfg = _config(compose, env)
    master_env = {k: "" if v is None else str(v) for k, v in cfg["services"]["master"]["environment"].items()}
    settings = Settings.from_dict({"workers": [{"name": "worker-1", "password": "x"}]}, env=master_env)
    assert settings.forge == "github" and settings.github.app_id == 12345
    assert settings.github.webhook_secret == "hook-secret"
    assert settings.db_url == "postgresql+psycopg://easeml:s3cret@postgres:5432/easeml"
    assert settings.ledger_url == settings.db_url
    assert settings.smtp.host == "mail.example.org" and settings.smtp.tls == "starttls"
    assert settings.allowed_email_domains == ("example.org", "example.com")
    assert settings.github.private_key_path == "/keys/master/github-app.private-key.pem"
    assert settings.admin_user == "ops" and settings.admin_password == "ui-secret"
    worker_env = cfg["services"]["worker"]["environment"]
    # The names the worker's buildbot.tac and the build steps read.
    tac = (ROOT / "worker" / "buildbot.tac").read_text()
    assert '"EASEML_WORKER_" + key.upper()' in tac and worker_env["EASEML_WORKER_MASTER"] == "master:9989"
    factory = (ROOT / "easeml_buildbot" / "master" / "factory.py").read_text()
    for var in ("EASEML_WORKER_KEY", "EASEML_WORKER_RUNNER", "EASEML_WORKER_CACHE_DIR", "EASEML_WORKER_PASSPHRASE_FILE"):
        assert var in factory and var in worker_env, var
    assert worker_env["EASEML_WORKER_KEY"] == "/keys/worker/easeml_priv.asc"


def test_cluster_names_line_up_with_the_router_and_the_settings(compose):
    """The router URL documented for the `cluster` profile and the default realm are what
    crossbar/config.json serves, and (with the multi-master settings) what the masters read."""
    import json

    router = json.loads((ROOT / "crossbar" / "config.json").read_text())["workers"][0]
    realms = {r["name"] for r in router["realms"]}
    (web,) = [t for t in router["transports"] if t["type"] == "web"]
    assert web["paths"]["ws"]["type"] == "websocket"
    url = f"ws://crossbar:{web['endpoint']['port']}/ws"
    assert f"EASEML_MQ_ROUTER_URL={url}" in ENV_EXAMPLE.read_text()
    cfg = _config(compose, ENV_EXAMPLE.read_text() + f"\nEASEML_MQ_ROUTER_URL={url}\n"
                  "EASEML_GITHUB_APP_ID=12345\nEASEML_GITHUB_WEBHOOK_SECRET=hook-secret\n", "--profile", "cluster")
    env = cfg["services"]["master-2"]["environment"]
    assert env["EASEML_MQ_ROUTER_URL"] == url and env["EASEML_MQ_REALM"] in realms
    if "mq_router_url" not in Settings.__dataclass_fields__:
        pytest.skip("needs the multi-master settings mq_router_url / mq_realm (branch multimaster)")
    master_env = {k: "" if v is None else str(v) for k, v in env.items()}
    settings = Settings.from_dict({"workers": [{"name": "worker-1", "password": "x"}]}, env=master_env)
    assert settings.mq_router_url == url and settings.mq_realm in realms
