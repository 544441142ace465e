from __future__ import annotations

import pytest

from easeml_buildbot.master import Settings, SettingsError

GOOD = """
forge = "github"
ledger_url = "sqlite:///ledger.sqlite"
runner = "process"
allowed_email_domains = ["example.com"]

[[workers]]
name = "w1"
password_file = "pw"

[github]
app_id = 7
private_key_path = "app.pem"
webhook_secret_file = "hook-secret"
api_url = "http://127.0.0.1:9/api/v3/"

[smtp]
host = "mail"
password_file = "smtp-pw"
"""


# The settings check that the file is a PEM private key; the GitHub App tests use real keys.
FAKE_PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAK\n-----END RSA PRIVATE KEY-----\n"


def _write(tmp_path, text=GOOD):
    (tmp_path / "pw").write_text("worker-pass\n")
    (tmp_path / "hook-secret").write_text("s3cret-value\n")
    (tmp_path / "smtp-pw").write_text("smtp-pass\n")
    (tmp_path / "app.pem").write_text(FAKE_PEM)
    p = tmp_path / "easeml.toml"
    p.write_text(text)
    return p


def test_load_resolves_paths_and_reads_secret_files(tmp_path):
    s = Settings.load(_write(tmp_path), env={})
    assert s.forge == "github" and s.runner == "process"
    assert s.ledger_url == f"sqlite:///{tmp_path}/ledger.sqlite"
    assert s.github.private_key_path == str(tmp_path / "app.pem")
    assert s.github.api_url == "http://127.0.0.1:9/api/v3"
    assert s.github.webhook_secret == "s3cret-value"
    assert s.workers[0].password == "worker-pass"
    assert s.smtp.password == "smtp-pass" and s.smtp.host == "mail"
    assert s.allowed_email_domains == ("example.com",)


def test_secrets_never_in_repr(tmp_path):
    s = Settings.load(_write(tmp_path), env={})
    text = repr(s)
    for secret in ("s3cret-value", "worker-pass", "smtp-pass"):
        assert secret not in text


def test_env_overrides_top_level_and_tables(tmp_path):
    env = {"EASEML_RUNNER": "docker", "EASEML_GITHUB_APP_ID": "99", "EASEML_SMTP_PORT": "2525",
           "EASEML_LEDGER_URL": "postgresql+psycopg://u@h/db", "EASEML_UNRELATED_THING": "x"}
    s = Settings.load(_write(tmp_path), env=env)
    assert s.runner == "docker" and s.github.app_id == 99 and s.smtp.port == 2525
    assert s.ledger_url == "postgresql+psycopg://u@h/db"


def test_errors_name_the_file_and_key(tmp_path):
    p = _write(tmp_path, GOOD.replace('runner = "process"', 'runner = "podman"\nbogus = 1'))
    with pytest.raises(SettingsError) as e:
        Settings.load(p, env={})
    assert str(p) in str(e.value) and "bogus" in str(e.value)
    p = _write(tmp_path, GOOD.replace('runner = "process"', 'runner = "podman"'))
    with pytest.raises(SettingsError, match=r"runner: must be 'docker' or 'process'"):
        Settings.load(p, env={})


def test_github_forge_requires_a_webhook_secret(tmp_path):
    p = _write(tmp_path, GOOD.replace('webhook_secret_file = "hook-secret"', ""))
    with pytest.raises(SettingsError, match="webhook_secret"):
        Settings.load(p, env={})


def test_local_forge_needs_only_a_repo(tmp_path):
    p = tmp_path / "easeml.toml"
    p.write_text('forge = "local"\n[local]\nrepo = "models"\n')
    s = Settings.load(p, env={})
    assert s.local.repo == str(tmp_path / "models") and s.local.branch == "main"


def test_example_file_parses(tmp_path):
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "master" / "easeml.toml.example"
    text = example.read_text()
    for f in ("secrets/worker1-password", "secrets/webhook-secret", "secrets/admin-password"):
        (tmp_path / f).parent.mkdir(exist_ok=True)
        (tmp_path / f).write_text("x\n")
    (tmp_path / "secrets/github-app.pem").write_text(FAKE_PEM)
    p = tmp_path / "easeml.toml"
    p.write_text(text)
    s = Settings.load(p, env={})
    assert s.forge == "github" and s.github.check_name == "easeml/ci"


def test_admin_account_needs_a_password_and_never_shows_it(tmp_path):
    p = tmp_path / "easeml.toml"
    p.write_text('forge = "local"\nadmin_user = "ops"\n[local]\nrepo = "r"\n')
    with pytest.raises(SettingsError, match="admin_password"):
        Settings.load(p, env={})
    (tmp_path / "admin-pw").write_text("hunter2-long\n")
    p.write_text('forge = "local"\nadmin_user = "ops"\nadmin_password_file = "admin-pw"\n[local]\nrepo = "r"\n')
    s = Settings.load(p, env={})
    assert s.admin_password == "hunter2-long" and "hunter2" not in repr(s)


@pytest.mark.parametrize("value, port, mode", [(False, 25, "none"), (True, 587, "starttls"), (True, 465, "ssl"),
                                              ('"ssl"', 465, "ssl"), ('"starttls"', 587, "starttls"),
                                              ('"true"', 465, "ssl")])
def test_smtp_tls_modes(tmp_path, value, port, mode):
    text = GOOD.replace('host = "mail"', f'host = "mail"\nport = {port}\ntls = {str(value).lower()}')
    assert Settings.load(_write(tmp_path, text), env={}).smtp.tls == mode


def test_smtp_typos_are_errors_not_plaintext(tmp_path):
    with pytest.raises(SettingsError, match=r"smtp.tls: must be .*'sll'"):
        Settings.load(_write(tmp_path, GOOD.replace('host = "mail"', 'host = "mail"\ntls = "sll"')), env={})
    with pytest.raises(SettingsError, match=r"smtp.ca_fil: unknown key \(did you mean 'ca_file'\?\)"):
        Settings.load(_write(tmp_path, GOOD.replace('host = "mail"', 'host = "mail"\nca_fil = "ca.pem"')), env={})


def test_smtp_ca_file_and_author_mail(tmp_path):
    text = GOOD.replace('host = "mail"', 'host = "mail"\nca_file = "ca.pem"\nattempts = 2')
    (tmp_path / "ca.pem").write_text(_ca_pem(tmp_path))
    s = Settings.load(_write(tmp_path, "email_pr_author = false\n" + text), env={"EASEML_SMTP_TIMEOUT": "5"})
    assert s.smtp.ca_file == str(tmp_path / "ca.pem") and s.smtp.attempts == 2 and s.smtp.timeout == 5.0
    assert s.email_pr_author is False
    assert Settings.load(_write(tmp_path), env={}).email_pr_author is True


def test_configure_keeps_the_smtp_password_a_buildbot_secret(tmp_path):
    """The mail notifier gets util.Secret, rendered by Buildbot's secrets provider, not the text."""
    from buildbot.process.properties import Secret

    from easeml_buildbot.master import configure
    from easeml_buildbot.master.mail import EasemlMailNotifier

    text = GOOD.replace('forge = "github"', 'forge = "local"\nresults_dir = "results"') + '\n[local]\nrepo = "repo"\n'
    s = Settings.load(_write(tmp_path, text), env={})
    c: dict = {}
    configure(c, s)
    notifiers = [x for x in c["services"] if isinstance(x, EasemlMailNotifier)]
    assert len(notifiers) == 1
    assert any(isinstance(v, Secret) for v in notifiers[0]._config_kwargs.values())
    assert "smtp-pass" not in repr(notifiers[0]._config_args) + repr(notifiers[0]._config_kwargs)
    assert c["secretsProviders"]


def _ca_pem(tmp_path) -> str:
    """A real self-signed CA certificate (openssl), as an operator's private relay CA."""
    import subprocess

    key, crt = tmp_path / "ca.key", tmp_path / "ca.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", str(key), "-out", str(crt), "-days", "2", "-subj", "/CN=relay-ca"],
                   check=True, capture_output=True, timeout=60)
    return crt.read_text()


@pytest.mark.parametrize("value, seconds", [(5400, 5400), ('"5400"', 5400), ('"90s"', 90), ('"15m"', 900),
                                            ('"1h"', 3600), ('"1h30m"', 5400), ('"2.5m"', 150)])
def test_build_timeout_takes_durations(tmp_path, value, seconds):
    s = Settings.load(_write(tmp_path, f"build_timeout = {value}\n" + GOOD), env={})
    assert s.build_timeout == seconds


def test_every_problem_is_reported_at_once_naming_file_and_key(tmp_path):
    text = ('build_timeout = "1x"\nwww_port = "eighty"\nbuid_timeout = 3\n'
            + GOOD.replace('host = "mail"', 'host = "mail"\nca_file = "no-such-ca.pem"\nport = 2.5')
            .replace('runner = "process"', 'runner = "podman"'))
    p = _write(tmp_path, text)
    (tmp_path / "app.pem").write_text("")  # an empty App key
    with pytest.raises(SettingsError) as e:
        Settings.load(p, env={})
    lines = e.value.problems
    assert all(line.startswith(f"{p}: ") for line in lines), lines
    text = str(e.value)
    assert "build_timeout: must be a duration (seconds, or e.g. 90s, 15m, 1h), not '1x'" in text
    assert "www_port: must be a port number, not 'eighty'" in text
    assert "runner: must be 'docker' or 'process'" in text
    assert "buid_timeout: unknown key (did you mean 'build_timeout'?)" in text
    assert f"smtp.port: must be a port number, not 2.5" in text
    assert f"github.private_key_path: {tmp_path / 'app.pem'} is empty" in text
    assert f"smtp.ca_file: {tmp_path / 'no-such-ca.pem'}: no such file" in text
    assert len(lines) == 7, lines
    assert "invalid literal" not in text


def test_app_key_and_ca_file_problems_name_file_and_key(tmp_path):
    p = _write(tmp_path, GOOD.replace('host = "mail"', 'host = "mail"\nca_file = "ca.pem"'))
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    (tmp_path / "app.pem").unlink()
    with pytest.raises(SettingsError) as e:
        Settings.load(p, env={})
    text = str(e.value)
    assert f"{p}: github.private_key_path: {tmp_path / 'app.pem'}: no such file" in text
    assert f"{p}: smtp.ca_file: {tmp_path / 'ca.pem'}: not a PEM file of CA certificates" in text
    (tmp_path / "app.pem").write_text("ssh-rsa AAAA not a pem\n")
    with pytest.raises(SettingsError, match=r"github.private_key_path: .*app.pem: not a PEM private key"):
        Settings.load(p, env={})
    # Without mail, the CA file is not read: no problem to report.
    (tmp_path / "app.pem").write_text(FAKE_PEM)
    assert Settings.load(p, env={"EASEML_EMAIL_ENABLED": "false"}).email_enabled is False


def test_problems_from_the_environment_name_the_variable(tmp_path):
    (tmp_path / "pw").write_text("x\n")
    with pytest.raises(SettingsError) as e:
        Settings.load(_write(tmp_path), env={"EASEML_BUILD_TIMEOUT": "soon", "EASEML_SMTP_PORT": "smtp",
                                             "EASEML_GITHUB_WEBHOOK_SECRET_FILE": "missing-secret"})
    text = str(e.value)
    assert "build_timeout (from $EASEML_BUILD_TIMEOUT): must be a duration" in text
    assert "smtp.port (from $EASEML_SMTP_PORT): must be a port number, not 'smtp'" in text
    assert f"github.webhook_secret_file (from $EASEML_GITHUB_WEBHOOK_SECRET_FILE): cannot read " \
           f"{tmp_path / 'missing-secret'}: No such file or directory" in text


def test_buildbot_checkconfig_lists_every_settings_problem(tmp_path):
    """A real `buildbot checkconfig` on a master made by `buildbot create-master` with our master.cfg."""
    import shutil
    import subprocess

    from support.buildbot_harness import ROOT, VENV_BIN, _clean_env, _master_template

    master = tmp_path / "master"
    shutil.copytree(_master_template(), master)
    shutil.copy(ROOT / "master" / "master.cfg", master / "master.cfg")
    _write(master, 'build_timeout = "1h"\n' + GOOD.replace('host = "mail"', 'host = "mail"\nca_file = "ca.pem"'))
    (master / "app.pem").write_text("")

    def checkconfig():
        return subprocess.run([str(VENV_BIN / "buildbot"), "checkconfig", str(master)], capture_output=True,
                              text=True, env=_clean_env(None), timeout=120)

    r = checkconfig()
    assert r.returncode == 1, r.stdout + r.stderr
    toml = master / "easeml.toml"
    assert "Configuration Errors:" in r.stderr
    assert f"  {toml}: github.private_key_path: {master / 'app.pem'} is empty" in r.stderr
    assert f"  {toml}: smtp.ca_file: {master / 'ca.pem'}: no such file" in r.stderr
    assert "build_timeout" not in r.stderr  # "1h" is a duration
    assert "Traceback" not in r.stderr and "traceback in logfile" not in r.stderr

    (master / "app.pem").write_text(FAKE_PEM)
    (master / "ca.pem").write_text(_ca_pem(master))
    r = checkconfig()
    assert r.returncode == 0 and "Config file is good!" in r.stdout, r.stdout + r.stderr


def test_buildbot_checkconfig_lists_settings_and_mail_problems_together(tmp_path):
    """Issue 13: one `buildbot checkconfig` lists every operator-setting problem, those found
    while parsing (a bad duration), the files (an empty App key, a missing CA file, a missing
    secret file) and the values only the mail needs (sender, operator, attempts), each naming
    the settings file and the key; none waits for the first one to be fixed."""
    import shutil
    import subprocess

    from support.buildbot_harness import ROOT, VENV_BIN, _clean_env, _master_template

    master = tmp_path / "master"
    shutil.copytree(_master_template(), master)
    shutil.copy(ROOT / "master" / "master.cfg", master / "master.cfg")
    text = ('build_timeout = "1x"\noperator_email = "ops"\n'
            + GOOD.replace('host = "mail"', 'host = "mail"\nca_file = "ca.pem"\nfrom_addr = "nope"\nattempts = 0')
            .replace('webhook_secret_file = "hook-secret"', 'webhook_secret_file = "no-such-secret"'))
    _write(master, text)
    (master / "app.pem").write_text("")
    r = subprocess.run([str(VENV_BIN / "buildbot"), "checkconfig", str(master)], capture_output=True,
                       text=True, env=_clean_env(None), timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    toml = master / "easeml.toml"
    lines = [ln.strip() for ln in r.stderr.split("Configuration Errors:", 1)[-1].splitlines() if ln.strip()]
    expected = [f"{toml}: build_timeout: must be a duration (seconds, or e.g. 90s, 15m, 1h), not '1x'",
                f"{toml}: github.webhook_secret_file: cannot read {master / 'no-such-secret'}: No such file or directory",
                f"{toml}: github.private_key_path: {master / 'app.pem'} is empty (expected the GitHub App's PEM private key)",
                f"{toml}: smtp.ca_file: {master / 'ca.pem'}: no such file",
                f"{toml}: smtp.from_addr: 'nope' is not an email address",
                f"{toml}: smtp.attempts: must be at least 1, not 0",
                f"{toml}: operator_email: 'ops' is not an email address"]
    assert sorted(lines) == sorted(expected), r.stderr  # each once: the unreadable secret is not also "required"
    assert "Traceback" not in r.stderr


def test_several_masters_settings_from_file_and_environment(tmp_path):
    """mq_router_url turns on Buildbot's multiMaster with the WAMP MQ; the environment names
    (EASEML_MQ_ROUTER_URL, EASEML_MQ_REALM, EASEML_MASTER_EXPIRY) are the ones compose sets."""
    pg = 'db_url = "postgresql+psycopg://u@pg/easeml"\nledger_url = "postgresql+psycopg://u@pg/easeml"\n'
    text = GOOD.replace('ledger_url = "sqlite:///ledger.sqlite"\n', pg)
    s = Settings.load(_write(tmp_path, text), env={})
    assert (s.mq_router_url, s.mq_realm, s.master_expiry) == ("", "realm1", 600.0)  # one master
    env = {"EASEML_MQ_ROUTER_URL": "ws://crossbar:8080/ws", "EASEML_MQ_REALM": "easeml",
           "EASEML_MASTER_EXPIRY": "2m"}
    s = Settings.load(_write(tmp_path, text), env=env)
    assert (s.mq_router_url, s.mq_realm, s.master_expiry) == ("ws://crossbar:8080/ws", "easeml", 120.0)


def test_several_masters_need_a_router_url_and_a_shared_database(tmp_path):
    text = 'mq_router_url = "crossbar:8080"\nmaster_expiry = "soon"\n' + GOOD
    with pytest.raises(SettingsError) as e:
        Settings.load(_write(tmp_path, text), env={})
    msg = str(e.value)
    assert "easeml.toml: mq_router_url: must be a WAMP router's WebSocket URL" in msg
    assert "easeml.toml: master_expiry: must be a duration" in msg
    assert "easeml.toml: db_url: must be a server database" in msg
    assert "easeml.toml: ledger_url: must be a server database" in msg


def test_configure_several_masters(tmp_path, monkeypatch):
    from buildbot.data import masters
    from buildbot.util import service

    from easeml_buildbot.master import configure
    from easeml_buildbot.master.cluster import ClusterService

    monkeypatch.setattr(masters, "EXPIRE_MINUTES", masters.EXPIRE_MINUTES)  # restored afterwards
    monkeypatch.setattr(service.ClusteredBuildbotService, "POLL_INTERVAL_SEC",
                        service.ClusteredBuildbotService.POLL_INTERVAL_SEC)
    pg = 'db_url = "postgresql+psycopg://u@pg/easeml"\nledger_url = "postgresql+psycopg://u@pg/easeml"\n'
    text = 'email_enabled = false\n' + GOOD.replace('ledger_url = "sqlite:///ledger.sqlite"\n', pg)
    c: dict = {}
    configure(c, Settings.load(_write(tmp_path, text), env={}))
    assert "multiMaster" not in c and "mq" not in c  # one master: Buildbot's defaults
    env = {"EASEML_MQ_ROUTER_URL": "ws://crossbar:8080/ws", "EASEML_MASTER_EXPIRY": "30s"}
    c = {}
    configure(c, Settings.load(_write(tmp_path, text), env=env))
    assert c["multiMaster"] is True
    assert c["mq"] == {"type": "wamp", "router_url": "ws://crossbar:8080/ws", "realm": "realm1"}
    assert masters.EXPIRE_MINUTES == 0.5 and service.ClusteredBuildbotService.POLL_INTERVAL_SEC == 15
    beats = [x for x in c["services"] if isinstance(x, ClusterService)]
    assert len(beats) == 1 and beats[0]._config_kwargs == {"heartbeat": 10.0}
