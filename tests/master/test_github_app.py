"""App authentication against the local GitHub stand-in: real HTTP, real RS256 JWTs."""

from __future__ import annotations

import pytest

from support.github_sim import APP_ID, GitHubSim, app_sim  # noqa: F401  (fixture)

from easeml_buildbot.master.github_app import GitHubApp


def test_installation_token_is_cached_until_near_expiry(app_sim):
    now = [1_000.0]
    import time as _t

    now[0] = _t.time()
    app = GitHubApp(APP_ID, app_sim.app_key, app_sim.url, refresh_margin=300, clock=lambda: now[0])
    t1 = app.installation_token(5)
    assert app.installation_token(5) == t1 and app.tokens_fetched == 1
    now[0] += 3600 - 301  # still 301 s left
    assert app.installation_token(5) == t1 and app.tokens_fetched == 1
    now[0] += 2  # inside the margin: refresh
    t2 = app.installation_token(5)
    assert t2 != t1 and app.tokens_fetched == 2
    assert app.installation_token(6) not in (t1, t2)  # per installation
    assert [r.auth for r in app_sim.requests] == ["jwt", "jwt", "jwt"]
    assert app_sim.errors() == []
    assert t1 not in repr(app)


def test_clone_token_is_read_only_and_cached_apart(app_sim):
    app = GitHubApp(APP_ID, app_sim.app_key, app_sim.url)
    full, clone = app.installation_token(5), app.clone_token(5)
    assert clone != full and app.clone_token(5) == clone and app.installation_token(5) == full
    assert app_sim.token_permissions[clone] == {"contents": "read"}
    assert app_sim.token_permissions[full] == {}  # everything the App was granted
    assert app.tokens_fetched == 2 and app_sim.errors() == []


def test_check_run_calls_validate_against_openapi(app_sim):
    app = GitHubApp(APP_ID, app_sim.app_key, app_sim.url)
    run = app.create_check_run(5, "o/r", name="easeml/ci", head_sha="a" * 40, status="queued",
                               details_url="http://127.0.0.1/#/builds/1", external_id="1",
                               output={"title": "Queued", "summary": "waiting"})
    app.update_check_run(run, status="in_progress")
    app.update_check_run(run, status="completed", conclusion="neutral",
                         output={"title": "t", "summary": "s"})
    found = app.find_check_run(5, "o/r", "easeml/ci", "a" * 40)
    assert found is not None and found.id == run.id and found.conclusion == "neutral"
    assert app_sim.errors() == []
    assert [v for v, _ in app_sim.check_run_calls("o/r")] == ["create", "update", "update"]
    assert {r.auth for r in app_sim.requests if r.path.startswith("/repos/")} == {"installation"}


def test_a_wrong_app_key_is_refused(app_sim):
    other, other_key = GitHubSim.with_new_app_key(app_id=APP_ID)
    app = GitHubApp(APP_ID, other_key, app_sim.url)
    with pytest.raises(Exception):
        app.installation_token(5)
    assert any("needs the App's JWT" in e for e in app_sim.errors())


def test_transient_errors_on_updates_are_retried_but_creates_are_not(app_sim):
    app = GitHubApp(APP_ID, app_sim.app_key, app_sim.url)
    app.installation_token(5)
    app_sim.fail_next = [502]
    with pytest.raises(Exception):
        app.create_check_run(5, "o/r", name="easeml/ci", head_sha="b" * 40, status="queued")
    assert [v for v, _ in app_sim.check_run_calls("o/r")] == ["create"]  # not re-POSTed
    run = app.create_check_run(5, "o/r", name="easeml/ci", head_sha="b" * 40, status="queued")
    app_sim.fail_next = [503, 502]
    app.update_check_run(run, status="completed", conclusion="success", output={"title": "t", "summary": "s"})
    assert app_sim.check_runs[run.id]["conclusion"] == "success"
    assert [v for v, _ in app_sim.check_run_calls("o/r")] == ["create", "create", "update", "update", "update"]


def test_details_url_is_sent_only_when_it_is_a_web_link(app_sim):
    """A master without an http(s) buildbotURL has no link GitHub would accept: leave it out."""
    app = GitHubApp(APP_ID, app_sim.app_key, app_sim.url)
    run = app.create_check_run(5, "o/r", name="easeml/ci", head_sha="c" * 40, status="queued",
                               details_url="#/builds/1")
    app.update_check_run(run, status="in_progress", details_url="#/builds/1")
    app.update_check_run(run, status="completed", conclusion="success", details_url="https://ci.example/b/1",
                         output={"title": "t", "summary": "s"})
    bodies = [b for _, b in app_sim.check_run_calls("o/r")]
    assert ["details_url" in b for b in bodies] == [False, False, True]
    assert bodies[-1]["details_url"] == "https://ci.example/b/1" and app_sim.errors() == []
