"""The browser console, server side: sign-in and its cookie, CSRF, scopes, read-only, the pages
and the rollout actions, against the served app (API + console) and a real SQLite registry."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from berth.config import Settings
from berth.console.session import COOKIE, Session, SessionSealer
from berth.console.traffic import TrafficHistory
from berth.errors import Conflict
from berth.rollouts.canary_analysis import Check, Verdict
from berth.rollouts.service import RolloutService
from berth.security.config import KeyConfig
from berth.security.keys import server_secret
from berth.serving.route_window import RouteWindow
from berth.store.audit import AuditLog
from tests.console_client import ConsoleSetup, console_app, csrf_of, wait_for_requests

IRIS_ROW = [5.1, 3.5, 1.4, 0.2]


@pytest.fixture
def console(settings: Settings, iris_files: tuple[Path, Path]) -> Iterator[ConsoleSetup]:
    with console_app(settings, iris_files) as setup:
        yield setup


def _audit(setup: ConsoleSetup) -> list[tuple[str, str, str]]:
    queue = setup.client.app.state.services.audit  # type: ignore[attr-defined]
    setup.client.portal.call(queue.flush)  # type: ignore[union-attr]
    return [(e.actor, e.action, e.outcome) for e in AuditLog(setup.registry.db).list(limit=200)]


# ------------------------------------------------------------------------------ signing in


def test_sign_in_sets_a_sealed_strict_httponly_cookie(console: ConsoleSetup) -> None:
    answer = console.sign_in("admin", "/console/models")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/console/models"
    cookie = next(c for c in answer.headers.get_list("set-cookie") if c.startswith(COOKIE + "="))
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "max-age", "path"} <= attributes
    assert "samesite=strict" in cookie.lower()
    assert "path=/console" in cookie.lower()
    assert "secure" not in attributes  # plain HTTP here; see the TLS test
    secret = console.secrets["admin"]
    value = console.client.cookies[COOKIE]
    assert secret not in value
    assert secret.split("_", 2)[2] not in value  # the secret part of berth_<id>_<secret>
    page = console.client.get("/console/models")
    assert page.status_code == 200
    assert "iris" in page.text
    assert "admin" in page.text
    assert secret not in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"


def test_sign_in_refuses_a_wrong_key_and_audits_it(console: ConsoleSetup) -> None:
    form = console.client.get("/console/sign-in")
    answer = console.client.post(
        "/console/sign-in",
        data={"credential": "berth_0123456789ab_wrong", "csrf": csrf_of(form.text)},
        follow_redirects=False,
    )
    assert answer.status_code == 401
    assert "not valid" in answer.text
    assert "berth_0123456789ab_wrong" not in answer.text
    assert COOKIE not in console.client.cookies
    assert ("anonymous", "auth.failure", "refused") in _audit(console)


def test_sign_in_needs_its_csrf_token_and_a_same_site_origin(console: ConsoleSetup) -> None:
    credential = console.secrets["admin"]
    console.client.get("/console/sign-in")
    without = console.client.post(
        "/console/sign-in", data={"credential": credential, "csrf": "guess"}
    )
    assert without.status_code == 403
    token = csrf_of(console.client.get("/console/sign-in").text)
    foreign = console.client.post(
        "/console/sign-in",
        data={"credential": credential, "csrf": token},
        headers={"Origin": "https://evil.example"},
    )
    assert foreign.status_code == 403
    assert COOKIE not in console.client.cookies


def test_sign_in_goes_back_to_console_pages_only(console: ConsoleSetup) -> None:
    assert console.sign_in("reader", "https://evil.example/").headers["location"] == "/console"
    assert console.sign_in("reader", "//evil.example").headers["location"] == "/console"


def test_a_key_without_the_read_scope_cannot_sign_in(console: ConsoleSetup) -> None:
    assert console.sign_in("predictor").status_code == 403
    assert COOKIE not in console.client.cookies


def test_a_jwt_signs_in_through_the_api_verification(
    settings: Settings, iris_files: tuple[Path, Path]
) -> None:
    import jwt
    from pydantic import SecretStr

    secret = "jwt-shared-secret-for-tests-0123456789"
    with console_app(
        settings, iris_files, jwt_secret=SecretStr(secret), jwt_audience="berth"
    ) as setup:
        token = jwt.encode(
            {"sub": "alice", "aud": "berth", "scope": "read", "exp": 4102444800},
            secret,
            algorithm="HS256",
        )
        setup.secrets["alice"] = token
        assert setup.sign_in("alice").status_code == 303
        page = setup.client.get("/console")
        assert page.status_code == 200
        assert "alice" in page.text
        assert token not in page.text
        wrong = jwt.encode({"sub": "x", "aud": "other", "exp": 4102444800}, secret)
        setup.secrets["wrong"] = wrong
        setup.client.cookies.clear()
        assert setup.sign_in("wrong").status_code == 401


def test_sign_out_ends_the_session(console: ConsoleSetup) -> None:
    console.sign_in("reader")
    token = console.csrf()
    assert console.client.post("/console/sign-out", data={"csrf": "nope"}).status_code == 403
    out = console.client.post("/console/sign-out", data={"csrf": token}, follow_redirects=False)
    assert out.status_code == 303
    assert COOKIE not in console.client.cookies
    assert console.client.get("/console", follow_redirects=False).status_code == 303
    assert ("console:reader", "console.sign_out", "ok") in _audit(console)


def test_a_revoked_key_ends_its_session_at_once(console: ConsoleSetup) -> None:
    console.sign_in("reader")
    assert console.client.get("/console").status_code == 200
    console.keys.revoke("reader")
    answer = console.client.get("/console/models", follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/console/sign-in?next=/console/models"
    assert COOKIE not in console.client.cookies


def test_altered_foreign_and_expired_cookies_are_no_session(
    console: ConsoleSetup, settings: Settings
) -> None:
    console.sign_in("admin")
    good = console.client.cookies[COOKIE]
    flipped = good[:-2] + ("A" if good[-2] != "A" else "B") + good[-1]
    sealer = SessionSealer(server_secret(KeyConfig.from_settings(settings)))
    expired = sealer.seal(Session(console.secrets["admin"], 1.0, "t"))
    foreign = SessionSealer(b"another server's secret").seal(
        Session(console.secrets["admin"], 4102444800.0, "t")
    )
    for value in (flipped, expired, foreign, "", "x" * 9000):
        console.client.cookies.set(COOKIE, value, path="/console")
        answer = console.client.get("/console", follow_redirects=False)
        assert answer.status_code == 303, value[:20]
    assert sealer.open(good) is not None


def test_cookies_are_secure_when_the_server_speaks_tls(
    settings: Settings, iris_files: tuple[Path, Path], tmp_path: Path
) -> None:
    with console_app(settings, iris_files, tls_cert_file=tmp_path / "cert.pem") as setup:
        plain = setup.client.get("/console/sign-in")  # over http the browser would not send it
        assert "secure" in plain.headers["set-cookie"].lower()
        setup.client.base_url = "https://testserver"  # type: ignore[assignment]
        answer = setup.sign_in("reader")
        assert answer.status_code == 303
        cookie = next(c for c in answer.headers.get_list("set-cookie") if c.startswith(COOKIE))
        assert "secure" in cookie.lower()


# ------------------------------------------------------------------------------ pages


def test_overview_shows_health_models_rollouts_and_traffic(console: ConsoleSetup) -> None:
    console.sign_in("reader")
    for _ in range(3):
        answer = console.client.post(
            "/api/v1/endpoints/iris/predict",
            json={"features": IRIS_ROW},
            headers={"X-API-Key": console.secrets["admin"]},
        )
        assert answer.status_code == 200, answer.text
    wait_for_requests(console, "iris", 3)
    page = console.client.get("/console")
    assert page.status_code == 200
    text = page.text
    assert "Models</dt><dd>1 <small>(2 versions)" in text
    assert f'href="/console/rollouts/{console.rollout_id}"' in text
    assert "Requests in total: 3." in text
    assert 'hx-get="/console/fragments/overview"' in text
    fragment = console.client.get("/console/fragments/overview")
    assert fragment.status_code == 200
    assert fragment.text.lstrip().startswith('<div id="live"')
    assert "<html" not in fragment.text


def test_charts_get_their_points_from_route_stats_readings(console: ConsoleSetup) -> None:
    console.sign_in("reader")
    page = console.client.get("/console/endpoints/iris")
    assert 'data-chart="/console/series/endpoints/iris"' in page.text
    assert '<script src="/console/static/uPlot.iife.min.js" defer></script>' in page.text
    now = [1_000_000.0]
    state = console.client.app.state  # type: ignore[attr-defined]
    state.console = replace(state.console, history=TrafficHistory(clock=lambda: now[0]))
    series = []
    sent = 0
    for calls in (0, 2, 5):
        for _ in range(calls):
            answer = console.client.post(
                "/api/v1/endpoints/iris/predict",
                json={"features": IRIS_ROW},
                headers={"X-API-Key": console.secrets["admin"]},
            )
            assert answer.status_code == 200
        sent += calls
        wait_for_requests(console, "iris", sent)
        series.append(console.client.get("/console/series/endpoints/iris").json())
        now[0] += 5.0  # the chart polls every 5 s
    assert series[0] == {"t": [], "rps": [], "p99_ms": []}
    assert series[1]["rps"] == [0.4]  # 2 requests in 5 s
    latest = series[-1]
    assert latest["t"] == [1_000_005.0, 1_000_010.0]
    assert latest["rps"] == [0.4, 1.0]
    assert latest["p99_ms"][-1] is not None
    overall = console.client.get("/console/series/overview")
    assert overall.status_code == 200
    assert set(overall.json()) == {"t", "rps", "p99_ms"}
    assert console.client.get("/console/series/endpoints/nope").status_code == 404


def test_model_and_version_pages(console: ConsoleSetup) -> None:
    console.sign_in("reader")
    models = console.client.get("/console/models")
    assert 'href="/console/models/iris"' in models.text
    model = console.client.get("/console/models/iris")
    assert model.status_code == 200
    assert "production → 1" in model.text
    assert 'href="/console/endpoints/iris"' in model.text  # where version 1 is deployed
    version = console.registry.get_version("iris", 2)
    page = console.client.get("/console/models/iris/versions/2")
    assert page.status_code == 200
    assert version.artifact.sha256 in page.text
    assert version.flavor in page.text
    assert "accuracy" in page.text
    assert "0.9700" in page.text
    assert "Signature (tensor)" in page.text or "Signature (tabular)" in page.text
    assert "iris</a> (canary, 0%)" in page.text  # the rollout routes iris:2 as the canary
    missing = console.client.get("/console/models/iris/versions/9")
    assert missing.status_code == 404
    assert "iris" in missing.text
    bad = console.client.get("/console/models/iris/versions/1x")
    assert bad.status_code == 400


def test_endpoint_page_shows_split_routes_and_history(console: ConsoleSetup) -> None:
    console.sign_in("reader")
    page = console.client.get("/console/endpoints/iris")
    assert page.status_code == 200
    assert '<svg class="split"' in page.text
    assert "stable: <a" in page.text
    assert "iris:1" in page.text
    assert "canary" in page.text
    assert "iris:2" in page.text
    assert f"rollout #{console.rollout_id}" in page.text
    assert console.client.get("/console/endpoints/nope").status_code == 404
    fragment = console.client.get("/console/fragments/endpoints/iris")
    assert fragment.status_code == 200
    assert "<html" not in fragment.text


def test_rollout_page_shows_steps_and_checks_against_thresholds(console: ConsoleSetup) -> None:
    service = RolloutService(console.registry)
    info = service.get(console.rollout_id)
    verdict = Verdict(
        "wait",
        (
            Check("requests", "wait", 12, 100, "12 of 100 canary requests"),
            Check("error rate", "pass", 0.0, 0.01, "no errors"),
            Check("p99 latency", "fail", 250.0, 120.0, "p99 250 ms above 120 ms"),
        ),
    )
    service.record(info, "analysis", "wait: 12 of 100", verdict.to_dict())
    console.sign_in("reader")
    page = console.client.get(f"/console/rollouts/{console.rollout_id}")
    assert page.status_code == 200
    text = page.text
    assert 'aria-current="step"' in text
    assert "loading" in text
    assert "100%" in text
    for name, status in (("requests", "wait"), ("error rate", "pass"), ("p99 latency", "fail")):
        assert f'<td>{name}</td><td><span class="{status}">{status}</span>' in text
    assert "<td>12</td><td>100</td>" in text  # a count of requests, not 12.0000
    assert "250.0000" in text
    assert "120.0000" in text
    assert "wait: 12 of 100" in text  # the event
    assert "Acting needs an admin key." in text
    assert "/confirm/" not in text
    listing = console.client.get("/console/rollouts")
    assert f"#{console.rollout_id} canary" in listing.text
    assert console.client.get("/console/rollouts/999").status_code == 404


# ------------------------------------------------------------------------------ acting


def test_admin_pauses_and_promotes_through_the_rollout_service(console: ConsoleSetup) -> None:
    rid = console.rollout_id
    console.sign_in("admin")
    page = console.client.get(f"/console/rollouts/{rid}")
    for action in ("promote", "pause", "rollback", "abort"):
        assert f'action="/console/rollouts/{rid}/confirm/{action}"' in page.text
    confirm = console.client.get(f"/console/rollouts/{rid}/confirm/pause")
    assert confirm.status_code == 200
    assert f'action="/console/rollouts/{rid}/pause"' in confirm.text
    token = csrf_of(confirm.text)
    stale = console.client.post(f"/console/rollouts/{rid}/pause", data={"csrf": "x"})
    assert stale.status_code == 403
    assert RolloutService(console.registry).get(rid).status == "running"
    paused = console.client.post(
        f"/console/rollouts/{rid}/pause", data={"csrf": token}, follow_redirects=False
    )
    assert paused.status_code == 303
    assert paused.headers["location"] == f"/console/rollouts/{rid}"
    assert RolloutService(console.registry).get(rid).status == "paused"
    page = console.client.get(f"/console/rollouts/{rid}")
    assert "/confirm/resume" in page.text
    assert "/confirm/pause" not in page.text
    again = console.client.post(f"/console/rollouts/{rid}/pause", data={"csrf": token})
    assert again.status_code == 409
    assert "already paused" in again.text
    promoted = console.client.post(f"/console/rollouts/{rid}/promote", data={"csrf": token})
    assert promoted.status_code == 200  # followed to the rollout page
    assert RolloutService(console.registry).get(rid).status == "promoted"
    assert "/confirm/" not in promoted.text
    endpoint = console.client.get("/console/endpoints/iris").text
    assert "stable: <a" in endpoint
    assert "iris:2</a> 100%" in endpoint
    audited = _audit(console)
    assert ("console:admin", "rollout.pause", "ok") in audited
    assert ("console:admin", "rollout.promote", "ok") in audited
    assert ("console:admin", "console.sign_in", "ok") in audited


def test_a_read_key_sees_no_buttons_and_its_posts_are_refused(console: ConsoleSetup) -> None:
    rid = console.rollout_id
    console.sign_in("reader")
    token = console.csrf(f"/console/rollouts/{rid}")
    assert console.client.get(f"/console/rollouts/{rid}/confirm/promote").status_code == 403
    for action in ("promote", "pause", "rollback", "abort"):
        answer = console.client.post(f"/console/rollouts/{rid}/{action}", data={"csrf": token})
        assert answer.status_code == 403, action
        assert "admin scope" in answer.text
    assert RolloutService(console.registry).get(rid).status == "running"


def test_a_read_only_console_offers_and_accepts_no_action(
    settings: Settings, iris_files: tuple[Path, Path]
) -> None:
    with console_app(settings, iris_files, console_read_only=True) as setup:
        rid = setup.rollout_id
        setup.sign_in("admin")
        page = setup.client.get(f"/console/rollouts/{rid}")
        assert "This console is read-only." in page.text
        assert "/confirm/" not in page.text
        assert "read-only console" in page.text
        token = csrf_of(page.text)
        assert setup.client.get(f"/console/rollouts/{rid}/confirm/abort").status_code == 403
        answer = setup.client.post(f"/console/rollouts/{rid}/abort", data={"csrf": token})
        assert answer.status_code == 403
        assert "read-only" in answer.text
        assert RolloutService(setup.registry).get(rid).status == "running"


def test_actions_on_a_finished_rollout_or_unknown_actions_are_refused(
    console: ConsoleSetup,
) -> None:
    rid = console.rollout_id
    RolloutService(console.registry).abort("iris")
    console.sign_in("admin")
    token = console.csrf()
    answer = console.client.post(f"/console/rollouts/{rid}/promote", data={"csrf": token})
    assert answer.status_code == 409
    assert "aborted" in answer.text
    assert console.client.get(f"/console/rollouts/{rid}/confirm/promote").status_code == 409
    unknown = console.client.post(f"/console/rollouts/{rid}/explode", data={"csrf": token})
    assert unknown.status_code == 404


def test_forms_must_be_url_encoded(console: ConsoleSetup) -> None:
    console.sign_in("admin")
    token = console.csrf()
    answer = console.client.post(
        f"/console/rollouts/{console.rollout_id}/pause", json={"csrf": token}
    )
    assert answer.status_code == 400
    assert RolloutService(console.registry).get(console.rollout_id).status == "running"


# ------------------------------------------------------------------------------ switches


def test_the_console_can_be_switched_off(settings: Settings, iris_files: tuple[Path, Path]) -> None:
    with console_app(settings, iris_files, console=False) as setup:
        assert setup.client.get("/console/sign-in").status_code == 404
        assert setup.client.get("/console/static/htmx.min.js").status_code == 404


def test_static_files_are_served_from_the_package(console: ConsoleSetup) -> None:
    for name in ("htmx.min.js", "uPlot.iife.min.js", "console.css"):
        answer = console.client.get(f"/console/static/{name}")
        assert answer.status_code == 200, name
        assert len(answer.content) > 1000


def test_console_routes_stay_out_of_the_openapi_document(console: ConsoleSetup) -> None:
    paths = console.client.app.openapi()["paths"]  # type: ignore[attr-defined]
    assert not [p for p in paths if p.startswith("/console")]


def test_serve_passes_console_read_only_to_its_workers() -> None:
    from berth.cli.serve import ServerOptions

    options = ServerOptions(served=[], host="127.0.0.1", port=1, console_read_only=True)
    assert options.environment()["BERTH_CONSOLE_READ_ONLY"] == "1"
    assert "BERTH_CONSOLE_READ_ONLY" not in ServerOptions([], "127.0.0.1", 1).environment()


def test_static_and_template_files_are_package_data() -> None:
    import fnmatch
    import tomllib

    root = Path(__file__).resolve().parent.parent
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["berth"]
    folder = root / "berth" / "console"
    files = [p for sub in ("static", "templates") for p in (folder / sub).iterdir()]
    assert len(files) > 10
    for path in files:
        relative = path.relative_to(root / "berth").as_posix()
        assert any(fnmatch.fnmatch(relative, p) for p in patterns), relative


def test_rates_come_from_readings_over_the_last_minute() -> None:
    now = [0.0]
    history = TrafficHistory(clock=lambda: now[0])
    assert history.rate("e") is None
    for at, requests in ((0.0, 0), (30.0, 30), (30.5, 999), (90.0, 150)):
        now[0] = at
        history.note("e", RouteWindow(requests=requests))
    rate = history.rate("e")
    assert rate is not None
    assert rate.seconds == 60.0  # from the reading at 30 s; the one at 30.5 s was too soon
    assert rate.per_second == 2.0
    assert [p.per_second for p in history.points("e")] == [1.0, 2.0]
    now[0] = 90.0 + 16 * 60
    history.note("e", RouteWindow(requests=150))
    assert len(history.points("e")) == 0  # older readings than a quarter of an hour are gone


def test_admin_resumes_aborts_and_rolls_back_with_confirmation(console: ConsoleSetup) -> None:
    rid = console.rollout_id
    service = RolloutService(console.registry)
    console.sign_in("admin")

    def press(number: int, action: str) -> None:
        confirm = console.client.get(f"/console/rollouts/{number}/confirm/{action}")
        assert confirm.status_code == 200, confirm.text
        done = console.client.post(
            f"/console/rollouts/{number}/{action}",
            data={"csrf": csrf_of(confirm.text)},
            follow_redirects=False,
        )
        assert done.status_code == 303, done.text

    press(rid, "pause")
    press(rid, "resume")
    assert service.get(rid).status == "running"
    press(rid, "abort")
    assert service.get(rid).status == "aborted"
    again = service.start("iris", "iris:2", "canary").rollout.id
    press(again, "rollback")
    rolled = service.get(again)
    assert rolled.status == "rolled_back"
    assert rolled.reason == "rolled back from the console"
    audited = _audit(console)
    for action in ("pause", "resume", "abort", "rollback"):
        assert ("console:admin", f"rollout.{action}", "ok") in audited


def test_lineage_and_shadow_agreement_are_shown(
    console: ConsoleSetup, iris_files: tuple[Path, Path]
) -> None:
    from berth.registration.service import RegisterRequest, register
    from berth.registry.endpoints import EndpointService
    from berth.registry.versions import Lineage

    model, sample = iris_files
    register(
        console.registry,
        RegisterRequest(
            name="iris",
            path=model,
            sample=sample,
            trust_pickle=True,
            lineage=Lineage("iris", 1, {"method": "onnx"}),
        ),
    )
    RolloutService(console.registry).abort("iris")
    EndpointService(console.registry).set_shadow("iris", "iris:3", 50.0)
    console.sign_in("reader")
    derived = console.client.get("/console/models/iris/versions/3").text
    assert 'href="/console/models/iris/versions/1">iris:1</a> · method: onnx' in derived
    assert "shadow, 50%" in derived
    source = console.client.get("/console/models/iris/versions/1").text
    assert "iris:3" in source
    endpoint = console.client.get("/console/endpoints/iris").text
    assert "Shadow iris:3 (50% mirrored)" in endpoint


def test_a_live_fragment_without_a_session_sends_the_window_to_sign_in(
    console: ConsoleSetup,
) -> None:
    answer = console.client.get(
        "/console/fragments/endpoints/iris",
        headers={
            "HX-Request": "true",
            "HX-Current-URL": "http://testserver/console/endpoints/iris",
        },
        follow_redirects=False,
    )
    assert answer.status_code == 401  # htmx swaps nothing on a 401
    assert answer.headers["HX-Redirect"] == "/console/sign-in?next=/console/endpoints/iris"
    elsewhere = console.client.get(
        "/console/fragments/overview",
        headers={"HX-Request": "true", "HX-Current-URL": "https://evil.example/x"},
        follow_redirects=False,
    )
    assert elsewhere.headers["HX-Redirect"] == "/console/sign-in?next=/console"


def test_no_secret_reaches_the_logs(
    console: ConsoleSetup, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    console.sign_in("admin")
    console.client.get("/console")
    console.client.get(f"/console/rollouts/{console.rollout_id}")
    form = console.client.get("/console/sign-in")
    console.client.post(
        "/console/sign-in",
        data={"credential": console.secrets["reader"] + "x", "csrf": csrf_of(form.text)},
    )
    _audit(console)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "console.sign_in" in logged  # the audit line was captured
    for secret in console.secrets.values():
        assert secret.split("_", 2)[2] not in logged
    assert console.client.cookies[COOKIE] not in logged


def test_an_action_confirmed_for_one_rollout_never_applies_to_a_newer_one(
    console: ConsoleSetup,
) -> None:
    service = RolloutService(console.registry)
    old = service.get(console.rollout_id)
    with pytest.raises(Conflict, match="no longer in progress"):
        service.pause("iris", rollout_id=old.id + 1)
    assert service.get(old.id).status == "running"
    assert service.pause("iris", rollout_id=old.id).status == "paused"
