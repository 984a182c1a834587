"""The live dashboard in real headless Chromium (Debian's, through Playwright) against a real
server with real telemetry: its figures match ``/metrics``, drift shows per feature with
histograms, a deploy action clicked and confirmed on the page changes ``GET /admin/deploy`` (and a
cancelled one does not), and the page's event stream does not hold up the server's shutdown."""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import SPEECH
from livehelp import ServerThread
from prometheus_client.parser import text_string_to_metric_families
from test_deploy_server import http, key_for, stream
from test_drift_server import offline_profile

from speechpipe.pipeline.config import Config
from speechpipe.pipeline.observability import start_telemetry

pytestmark = pytest.mark.corpus
CHROMIUM = "/usr/bin/chromium"
ADMIN = "admin-secret"


def totals(page: str) -> dict[tuple[str, str], float]:
    """Per (metric sample, variant), the sum over the other labels: read independently of the dashboard."""
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(page):
        for s in family.samples:
            key = (s.name, s.labels.get("pipeline_variant", ""))
            out[key] = out.get(key, 0.0) + s.value
    return out


def total(t: dict, name: str, variant: str | None = None) -> float:
    return sum(v for (n, var), v in t.items() if n == name and (variant is None or var == variant))


def get_text(srv, path: str) -> str:
    with urllib.request.urlopen(srv.http + path, timeout=10) as r:
        return r.read().decode()


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is absent (apt-get install chromium)")
def test_dashboard_matches_metrics_shows_drift_and_drives_the_deployment(engine, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    files = sorted(SPEECH.glob("librispeech-*.flac"))[:8] + sorted(SPEECH.glob("cmuarctic_*.wav"))[:4]
    cfg = Config().with_overrides(
        {
            "monitoring.baseline": offline_profile(engine, tmp_path, files),
            "monitoring.window_segments": 8,
            "monitoring.min_segments": 2,
            "deploy.mode": "canary",
            "deploy.candidate": "twin",
            "deploy.steps": [0.5, 1.0],
            "deploy.step_min_streams": 50,  # it stays at the first step: the page acts on it
            "deploy.state_file": str(tmp_path / "deploy.db"),
            "variants.twin.vad.backend": Config().vad.backend,
        }
    )
    telemetry = start_telemetry(cfg, mode="live", metrics_page=True, environ={}, announce=False)
    srv = ServerThread(engine, config=cfg, admin_token=ADMIN, telemetry=telemetry)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-background-networking"]
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1600})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            with srv:
                for path in ("/dashboard", "/dashboard/events", "/dashboard/state"):
                    with pytest.raises(urllib.error.HTTPError) as refused:
                        get_text(srv, path)
                    assert refused.value.code == 401, path
                with pytest.raises(urllib.error.HTTPError):
                    get_text(srv, f"/dashboard?token={ADMIN}x")
                page.goto(f"{srv.http}/dashboard?token={ADMIN}")
                page.wait_for_selector("#conn:has-text('live')", timeout=15_000)
                # (Playwright's sync API keeps an event loop in this thread: the clients run in others.)
                with ThreadPoolExecutor(3) as pool:
                    results = list(pool.map(lambda side: stream(srv, key_for("twin", 0.5, side)), (False, True, False)))
                assert {r.ready["variant"] for r in results} == {"default", "twin"}
                srv.tick()  # drift judges the windows
                finals = sum(len(r.finals) for r in results)
                metrics = totals(get_text(srv, "/metrics"))
                assert total(metrics, "speechpipe_output_segments_total") == finals
                # The page catches up within a few events; then its figures are /metrics' figures.
                page.wait_for_function(f"() => document.getElementById('svc-finals').textContent === '{finals}'")
                page.wait_for_function("() => document.getElementById('svc-streams-open').textContent === '0'")
                assert (
                    page.inner_text("#svc-accepted") == f"{total(metrics, 'speechpipe_input_streams_total'):g}" == "3"
                )
                assert page.inner_text("#svc-lost") == f"{total(metrics, 'speechpipe_finals_lost_total'):g}"
                for variant in ("default", "twin"):
                    row = f"tr[data-variant={variant}]"
                    want = total(metrics, "speechpipe_output_segments_total", variant)
                    assert page.inner_text(f"{row} td[data-field=finals]") == f"{want:g}"
                    words = total(metrics, "speechpipe_output_words_total", variant)
                    assert words > 0
                assert page.inner_text("tr[data-variant=twin] td[data-field=role]") == "candidate"
                assert page.inner_text("tr[data-variant=twin] td[data-field=weight]") == "50 %"
                # Drift: every feature of both variants, each with its baseline-vs-recent histogram:
                # quantities as bar charts with axes, 0/1 features as two rates, names people read.
                page.wait_for_function(
                    "() => document.querySelector('.variant-drift[data-variant=twin]"
                    " .feature[data-feature=bandwidth_hz] .hist canvas') !== null"
                )
                bandwidth = page.locator(".variant-drift[data-variant=twin] .feature[data-feature=bandwidth_hz]")
                assert "audio bandwidth" in bandwidth.inner_text() and "alert above" in bandwidth.inner_text()
                assert bandwidth.locator(".u-axis").count() == 2  # x (Hz) and y (share %)
                empty = page.locator(".variant-drift[data-variant=default] .feature[data-feature=empty]")
                assert empty.locator(".rate-row").count() == 2 and empty.locator("canvas").count() == 0
                assert all(v.endswith(" %") for v in empty.locator(".rate-value").all_inner_texts())
                shown = page.locator(".variant-drift[data-variant=default] .feature").count()
                drift = http(srv, "GET", "/admin/drift")[1]
                assert shown == len(drift["variants"]["default"]["features"]) >= 14
                # 12 one-utterance files: too few segments to judge a window of 8, and the page says so
                state = drift["variants"]["default"]["baseline"]
                assert state["recordings"] == len(files) and not state["judged"] and "too small" in state["reason"]
                small = page.locator(".variant-drift[data-variant=default] .baseline-small")
                assert small.count() == 1 and state["reason"] in small.inner_text()
                concept = page.inner_text(".variant-drift[data-variant=default] .concept")
                assert "stand-in: output confidence" in concept  # no feedback sent: the page says so
                # the WER estimated without references, as /admin/drift gives it
                q = drift["variants"]["default"]["quality"]
                shown_q = page.locator(".variant-drift[data-variant=default] .quality")
                if q["estimated_wer"] is None:
                    assert "not yet" in shown_q.inner_text()
                else:
                    assert float(shown_q.get_attribute("data-estimated")) == q["estimated_wer"]
                    assert f"estimated WER {100 * q['estimated_wer']:.1f} %" in shown_q.inner_text()
                assert f"calibration {q['calibration']['version']}" in shown_q.inner_text()
                # Alerts: one line per variant and feature that drifted, however often it flapped.
                raised = {(a["variant"], a["feature"]) for a in drift["alerts"]}
                lines = page.locator("#alerts li")
                assert lines.count() == len(raised) and raised, drift["alerts"]
                # The charts: time series with axes, a series per variant, hover values in the legend.
                page.wait_for_function(
                    "() => ['latency', 'wer', 'streams', 'weights'].every((c) =>"
                    " Number(document.getElementById('chart-' + c).dataset.points) >= 2)"
                )
                assert (
                    page.get_attribute("#chart-latency", "data-series") == "default p50|default p95|twin p50|twin p95"
                )
                assert page.get_attribute("#chart-weights", "data-series") == "default|twin"
                assert page.locator("#chart-streams .u-legend .u-series").count() == 4  # time + 3 series
                # The step says where it is and what it waits for; actions that cannot apply are off.
                assert page.inner_text("#dep-step") == "50 % (1 of 2)"
                assert "more candidate streams to end (1 of 50)" in page.inner_text("#dep-next")
                assert page.is_disabled("button[data-action=revert]") and page.is_disabled("button[data-action=resume]")
                assert "nothing was promoted" in page.get_attribute("button[data-action=revert]", "title")
                assert page.is_disabled("button[data-action=switch]")
                # At 1,024 px the page does not spill sideways (wide tables scroll in their box).
                page.set_viewport_size({"width": 1024, "height": 1400})
                page.wait_for_timeout(400)  # the charts follow the resize
                assert page.evaluate("document.documentElement.scrollWidth") <= 1024
                page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
                page.set_viewport_size({"width": 1400, "height": 1600})
                # A cancelled action changes nothing; a confirmed one changes the deployment.
                page.click("button[data-action=rollback]")
                assert page.is_visible("#confirm") and "Roll back" in page.inner_text("#confirm-text")
                page.click("#confirm-cancel")
                page.wait_for_selector("#action-result:has-text('rollback: cancelled')")
                assert http(srv, "GET", "/admin/deploy")[1]["state"] == "progressing"
                page.click("button[data-action=pause]")
                page.click("#confirm-ok")
                page.wait_for_selector("#action-result:has-text('pause: done')")
                assert http(srv, "GET", "/admin/deploy")[1]["paused"] is True
                page.wait_for_selector("button[data-action=resume]:not([disabled])")
                # Promote, then revert to the old primary, both from the page.
                page.click("button[data-action=promote]")
                page.click("#confirm-ok")
                page.wait_for_selector("#action-result:has-text('promote: done')")
                page.wait_for_selector("button[data-action=revert]:not([disabled])")
                assert page.is_disabled("button[data-action=rollback]") and page.is_disabled(
                    "button[data-action=pause]"
                )
                assert "Revert promotion sends every new stream back to default" in page.inner_text("#dep-next")
                page.click("button[data-action=revert]")
                assert "back to default" in page.inner_text("#confirm-text")
                page.click("#confirm-ok")
                page.wait_for_selector("#action-result:has-text('revert: done (promoted → reverted)')")
                state = http(srv, "GET", "/admin/deploy")[1]
                assert state["state"] == "reverted" and state["variants"]["twin"]["weight"] == 0.0
                assert [c["action"] for c in state["history"]][-3:] == ["pause", "promote", "revert"]
                assert state["history"][-1]["reason"] == "admin: dashboard"
                with ThreadPoolExecutor(1) as pool:  # (Playwright keeps an event loop in this thread)
                    back = pool.submit(stream, srv, key_for("twin", 0.5, True)).result()
                assert back.ready["variant"] == "default"
                page.wait_for_selector("#dep-state:has-text('reverted')")
                page.wait_for_selector("#history li[data-action=revert]")
                # the reverted candidate takes no traffic: its drift is shown dimmed, without alerts
                page.wait_for_selector(".variant-drift[data-variant=twin][data-idle=true]")
                assert page.locator(".variant-drift[data-variant=twin] .feature.alert").count() == 0
                assert page.locator("#alerts li[data-variant=twin]").count() == 0
                t0 = time.monotonic()
            # the server drained and stopped with the page's event stream still open
            assert time.monotonic() - t0 < 15
            page.wait_for_selector("#conn:has-text('reconnecting')", timeout=10_000)
        finally:
            browser.close()
    assert not [e for e in errors if "ERR_CONNECTION_REFUSED" not in e], errors
