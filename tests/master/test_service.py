"""EasemlService: the one owner of the settings, the ledger and the GitHub App of a master."""

from __future__ import annotations

import pytest

from easeml_buildbot.master import Settings, SettingsError
from easeml_buildbot.master.service import EasemlService


def _settings(tmp_path, text, **env):
    p = tmp_path / "easeml.toml"
    p.write_text(text)
    return p, Settings.load(p, env=env, strict=False)


def test_check_config_reports_every_settings_problem_through_config_error(tmp_path):
    from buildbot.config.errors import capture_config_errors

    p, s = _settings(tmp_path, 'forge = "local"\nbuild_timeout = "1 hour"\nrunner = "podman"\n'
                               '[local]\nrepo = "r"\n[smtp]\nfrom_addr = "nobody"\n')
    assert s.build_timeout == 3600  # the default stands in while the problem is reported
    with capture_config_errors() as errors:
        EasemlService(s)
    assert errors.errors == list(s.problems) and len(s.problems) == 3, errors.errors
    assert all(e.startswith(f"{p}: ") for e in errors.errors)
    assert {e.split(": ")[1] for e in errors.errors} == {"build_timeout", "runner", "smtp.from_addr"}
    with pytest.raises(SettingsError):  # strict (the default): raised at once, as tools expect
        Settings.load(p, env={})


def test_a_settings_file_that_is_not_toml_is_one_problem_naming_the_file(tmp_path):
    from buildbot.config.errors import capture_config_errors

    p, s = _settings(tmp_path, 'forge = "local\n')
    with capture_config_errors() as errors:
        EasemlService(s)
    (problem,) = errors.errors
    assert problem.startswith(f"{p}: ") and "line 1" in problem, problem


def test_one_ledger_per_service_replaced_when_the_url_changes(tmp_path):
    """No module-level cache: two masters in one process have their own Ledger (engine); a
    reconfig to another ledger_url opens that one, the same URL keeps the open one."""
    _, a = _settings(tmp_path, 'forge = "local"\nledger_url = "sqlite:///a.sqlite"\n[local]\nrepo = "r"\n')
    first, second = EasemlService(a), EasemlService(a)
    try:
        assert first.ledger() is first.ledger()
        assert first.ledger() is not second.ledger()
        led = first.ledger()
        first.reconfigService(a.with_(title="renamed"))
        assert first.ledger() is led
        b = a.with_(ledger_url=f"sqlite:///{tmp_path / 'b.sqlite'}")
        first.reconfigService(b)
        assert first.ledger() is not led and first.ledger().engine.url.database == str(tmp_path / "b.sqlite")
        assert first.settings is b
    finally:
        for svc in (first, second):
            svc.stopService()


def test_the_github_app_is_opened_on_first_use_and_names_a_bad_key(tmp_path):
    (tmp_path / "hook-secret").write_text("s\n")
    (tmp_path / "app.pem").write_text("-----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY-----\n")
    _, s = _settings(tmp_path, '[github]\napp_id = 7\nprivate_key_path = "app.pem"\n'
                               'webhook_secret_file = "hook-secret"\n[[workers]]\nname = "w"\npassword = "p"\n')
    assert s.problems == ()
    svc = EasemlService(s)
    (tmp_path / "app.pem").write_text("")  # emptied after the check: the first use says so
    with pytest.raises(SettingsError, match=r"app.pem is empty"):
        svc.app()
