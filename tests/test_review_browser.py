"""The review web UI in real headless Chromium (Debian's, driven by Playwright): hostile text stays inert, and a
reviewer's accept and correction reach the final labels."""

from __future__ import annotations

import csv
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from auditoryhum import topics
from auditoryhum.config import Settings
from auditoryhum.pipeline import audio_loader
from auditoryhum.review.web import UiServer, create_app
from auditoryhum.runner import StageWorker, Threads
from auditoryhum.stages.aligner import AlignerStage
from auditoryhum.v1 import pipeline_pb2 as pb
from tests.review_state import (
    HOSTILE_DATASET,
    HOSTILE_LABELS,
    HOSTILE_SCORES,
    HOSTILE_TAG,
    alignment,
    recording,
    review_state,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
HOSTILE_REVIEWER = '<img src=x onerror="window.__xss=6">'
# Records any Content-Security-Policy violation: escaped text never causes one.
WATCH_CSP = ("window.__csp = []; document.addEventListener('securitypolicyviolation', "
             "(e) => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));")


@pytest.fixture(scope="module")
def browser() -> Browser:
    assert CHROMIUM.exists(), "Debian chromium is not installed (make setup)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Page:
    context = browser.new_context()
    context.add_init_script(WATCH_CSP)
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture
def serve():
    servers = []

    def start(app) -> str:
        server = UiServer(app, port=0)
        server.start()
        servers.append(server)
        return server.url

    yield start
    for server in servers:
        server.stop()


def sign_in(page: Page, url: str, name: str) -> None:
    page.goto(url)
    expect(page).to_have_url(re.compile(r"/signin\?next="))
    page.fill("input[name=name]", name)
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_have_text("Review queue")


def assert_inert(page: Page) -> None:
    assert page.evaluate("window.__xss") is None
    assert page.evaluate("document.querySelectorAll('img, svg, iframe, object').length") == 0
    assert page.evaluate("Array.from(document.scripts, (s) => s.getAttribute('src'))") == ["/static/review.js"]
    assert page.evaluate("document.querySelectorAll('[onerror], [onload], [onmouseover]').length") == 0
    assert page.evaluate("window.__csp") == []


def test_hostile_labels_tags_and_names_render_as_inert_text(page: Page, serve, tmp_path):
    # The clip's file name is hostile too (the uri is shown); "/" cannot be in a file name, so no </script> here.
    hostile_file = tmp_path / '<img src=x onerror="window.__xss=7">.wav'
    shutil.copy(recording("Farm1.wav"), hostile_file)
    state = review_state([
        alignment("hostile", HOSTILE_DATASET, str(hostile_file), HOSTILE_SCORES,
                  {HOSTILE_TAG: 0.9, "speech": 0.4}),
        alignment("held", HOSTILE_DATASET, str(recording("Fire1.wav")), {"rain": 0.2}),
        alignment("fine", HOSTILE_DATASET, str(recording("Green1.wav")), {"bird song": 0.9}),
    ], fraction=0.6)
    state.desk.claim("held/review", HOSTILE_REVIEWER)
    url = serve(create_app(state.desk))

    sign_in(page, url, '"><script>window.__xss=8</script>')
    expect(page.get_by_text(HOSTILE_LABELS[0], exact=True)).to_be_visible()
    expect(page.get_by_role("cell", name=HOSTILE_DATASET).first).to_be_visible()
    expect(page.get_by_role("cell", name=HOSTILE_REVIEWER)).to_be_visible()
    expect(page.locator("header .who strong")).to_have_text('"><script>window.__xss=8</script>')
    assert page.locator("select[name=dataset] option").all_inner_texts() == ["all datasets", HOSTILE_DATASET]
    assert_inert(page)

    page.get_by_text(HOSTILE_LABELS[0], exact=True).click()
    expect(page.locator("h1 .label")).to_have_text(HOSTILE_LABELS[0])
    for label in HOSTILE_LABELS:
        expect(page.get_by_role("cell", name=label, exact=True)).to_be_visible()
    expect(page.locator(".tags li").first).to_contain_text(HOSTILE_TAG)
    expect(page.locator("code.uri")).to_have_text(str(hostile_file))
    page.hover(".scores tbody tr:last-child td")  # where an attribute injection would have put onmouseover
    # The audio of the hostile-named file still loads: served by range requests, within the CSP.
    page.wait_for_function("document.querySelector('audio').duration > 0")
    assert_inert(page)


def test_a_reviewer_accepts_one_task_and_corrects_another(page: Page, serve, models):
    state = review_state([
        alignment("farm", "site-a", str(recording("Farm1.wav")), {"dog bark": 0.20, "sheep": 0.15}),
        alignment("fire", "site-a", str(recording("Fire1.wav")), {"rain": 0.30, "fire crackle": 0.25}),
        alignment("green", "site-a", str(recording("Green1.wav")), {"bird song": 0.90}),
        alignment("harbor", "site-a", str(recording("Harbor1.wav")), {"crackling fire": 0.80}),
    ], fraction=0.5)
    assert sorted(f.clip.clip_id for f in state.final_labels()) == ["green", "harbor"]
    decisions = state.bus.subscribe("test-decisions", [topics.REVIEW_DECISIONS])
    aligner = StageWorker(state.bus, AlignerStage(models.scorer, audio_loader(Settings()), models.scorer_rate))
    with Threads([state.worker, aligner]):  # the corrected label goes to the aligner and comes back scored
        url = serve(create_app(state.desk))
        sign_in(page, url, "alice")
        expect(page.locator("table.tasks tbody tr")).to_have_count(2)
        expect(page.locator(".progress")).to_contain_text("0 reviewed, 2 pending")
        page.locator("a.task-link").first.click()  # the worst: farm, "dog bark"
        expect(page.locator("h1 .label")).to_have_text("dog bark")
        page.wait_for_load_state()  # the shortcuts' script has run
        page.keyboard.press("r")  # focuses the hint; keys typed there are text, not shortcuts
        page.keyboard.type("a")
        expect(page.locator("#hint")).to_have_value("a")
        page.keyboard.press("Escape")
        page.keyboard.press("a")  # accept, and on to the next task
        expect(page.locator("h1 .label")).to_have_text("rain")
        expect(page.locator(".flash")).to_contain_text("Saved: accept")
        page.wait_for_load_state()

        page.keyboard.press("c")  # focuses the correction; typing asks the server for the dataset's labels
        page.keyboard.type("cr")
        expect(page.locator("#label-options option")).to_have_count(1)
        picked = page.locator("#label-options option").first.get_attribute("value")
        assert picked == "crackling fire"
        page.fill("#correction", picked)
        page.click("#correct")
        expect(page.locator(".flash")).to_contain_text("No task left")

        finals = {}
        deadline = time.monotonic() + 60
        while len(finals) < 2 and time.monotonic() < deadline:
            finals.update((f.clip.clip_id, f) for f in state.final_labels())
            time.sleep(0.05)
    farm, fire = finals["farm"], finals["fire"]
    assert (farm.label, farm.source, farm.review_action) == ("dog bark", pb.LABEL_SOURCE_HUMAN,
                                                             pb.REVIEW_ACTION_ACCEPT)
    assert (fire.label, fire.source, fire.review_action) == ("crackling fire", pb.LABEL_SOURCE_HUMAN,
                                                             pb.REVIEW_ACTION_CORRECT)
    assert fire.score == pytest.approx(0.30) and fire.final_score != pytest.approx(0.30)  # the aligner's own score
    decided = [r.message() for r in decisions.poll(100)]  # on the bus for the record, by the signed-in reviewer
    assert sorted((d.task_id, d.reviewer) for d in decided) == [("farm/review", "alice"), ("fire/review", "alice")]

    page.reload()
    expect(page.locator(".progress")).to_contain_text("2 reviewed, 0 pending")
    expect(page.locator(".progress")).to_contain_text("1 accepted · 1 corrected")
    expect(page.locator(".uplift")).to_contain_text("2 scored")


def _stdout_lines(process: subprocess.Popen) -> queue.Queue:
    """The process's stdout lines as they come, then None at its end."""
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return lines


def test_auditoryhum_run_with_the_review_ui(page: Page, tmp_path):
    folder, out = tmp_path / "clips", tmp_path / "out"
    folder.mkdir()
    for name in ("Farm1.wav", "Fire1.wav", "Green1.wav", "Harbor1.wav", "Blacksmith1.wav", "TraficLow1.wav"):
        shutil.copy(recording(name), folder / name)
    stderr = (tmp_path / "stderr.txt").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "auditoryhum", "run", str(folder), "--out", str(out), "--review-fraction", "0.5",
         "--review-ui", "--ui-port", "0"], stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        lines, url = _stdout_lines(process), None
        while url is None:
            line = lines.get(timeout=300)
            assert line is not None, f"the run ended before serving the UI: {(tmp_path / 'stderr.txt').read_text()}"
            url = (re.search(r"Review UI: (http://\S+)", line) or [None, None])[1]
        sign_in(page, url, "alice")
        expect(page.locator("table.tasks tbody tr")).to_have_count(3)

        page.locator("a.task-link").first.click()
        accepted_path, accepted_label = page.locator("code.uri").inner_text(), page.locator("h1 .label").inner_text()
        page.wait_for_load_state()
        page.keyboard.press("a")
        expect(page.locator(".flash")).to_contain_text("Saved: accept")
        corrected_path, best = page.locator("code.uri").inner_text(), page.locator("h1 .label").inner_text()
        options = page.locator("#label-options option").evaluate_all("(os) => os.map((o) => o.value)")
        picked = next(label for label in options if label != best)
        page.fill("#correction", picked)
        page.click("#correct")
        expect(page.locator(".flash")).to_contain_text("Saved: correct")

        page.goto(url)
        page.click("#finish")
        expect(page.locator("h1")).to_have_text("Review finished")
        assert process.wait(timeout=300) == 0, (tmp_path / "stderr.txt").read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        stderr.close()
    rows = {row["path"]: row for row in csv.DictReader((out / "final_labels.csv").open())}
    assert len(rows) == 6
    assert (rows[accepted_path]["label"], rows[accepted_path]["source"], rows[accepted_path]["review_action"]) == (
        accepted_label, "human", "accept")
    assert (rows[corrected_path]["label"], rows[corrected_path]["source"], rows[corrected_path]["review_action"]) == (
        picked, "human", "correct")
    untouched = [r for p, r in rows.items() if p not in (accepted_path, corrected_path)]
    assert all(r["source"] == "model" for r in untouched)
