"""The review web UI over a real review stage: auth, CSRF, range requests, leases, idempotent decisions, escaping."""

from __future__ import annotations

import threading
import urllib.request
from urllib.parse import quote

import pytest
from starlette.testclient import TestClient

from auditoryhum.review.web import UiServer, check_bind, create_app
from auditoryhum.v1 import pipeline_pb2 as pb
from tests.review_state import HOSTILE_SCORES, HOSTILE_TAG, alignment, csrf_of, recording, review_state

TOKEN = "correct horse battery staple"
BASE = "http://127.0.0.1"
HOSTILE_URI = "/nonexistent/<img src=x onerror=alert(1)>.wav"


@pytest.fixture
def state():
    """Six clips of one dataset; the three worst are tasks: hostile (0.10), farm (0.20), fire (0.30)."""
    return review_state([
        alignment("hostile", "site-a", HOSTILE_URI, HOSTILE_SCORES,
                  {HOSTILE_TAG: 0.9, "speech": 0.4}),
        alignment("farm", "site-a", str(recording("Farm1.wav")), {"dog bark": 0.20, "sheep": 0.15}, {"Animal": 0.7}),
        alignment("fire", "site-a", str(recording("Fire1.wav")), {"rain": 0.30, "fire crackle": 0.25}),
        alignment("green", "site-a", str(recording("Green1.wav")), {"bird song": 0.90}),
        alignment("harbor", "site-a", str(recording("Harbor1.wav")), {"ship horn": 0.80}),
        alignment("smith", "site-a", str(recording("Blacksmith1.wav")), {"hammer": 0.85}),
    ], fraction=0.5)


def url(task_id: str, suffix: str = "") -> str:
    return f"/tasks/{quote(task_id, safe='')}{suffix}"


def client(app) -> TestClient:
    return TestClient(app, base_url=BASE, follow_redirects=False)


def signed_in(app, name: str = "alice", token: str | None = None) -> TestClient:
    c = client(app)
    page = c.get("/signin")
    assert page.status_code == 200
    form = {"csrf": csrf_of(page.text), "name": name, "next": "/"}
    if token is not None:
        form["token"] = token
    assert c.post("/signin", data=form).status_code == 303
    return c


def decide(c: TestClient, task_id: str, action: str, **fields):
    page = c.get(url(task_id))
    return c.post(url(task_id, "/decision"), data={"csrf": csrf_of(page.text), "action": action, **fields})


def test_without_the_token_everything_but_sign_in_is_refused(state):
    app = create_app(state.desk, token=TOKEN)
    anonymous = client(app)
    queue = anonymous.get("/?dataset=site-a")
    assert queue.status_code == 303 and queue.headers["location"] == "/signin?next=%2F%3Fdataset%3Dsite-a"
    assert anonymous.get(url("farm/review")).status_code == 303
    for path in ("/api/stats", "/api/labels", url("farm/review", "/audio")):
        refused = anonymous.get(path)
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer", path
        assert "token" in refused.json()["error"]
    assert anonymous.get("/static/review.js").status_code == 200  # the sign-in page needs its assets

    # A wrong token, or a bearer token that is not the one, is refused too.
    page = anonymous.get("/signin")
    assert 'name="token"' in page.text
    wrong = anonymous.post("/signin", data={"csrf": csrf_of(page.text), "name": "mallory", "token": "guess"})
    assert wrong.status_code == 401 and "Wrong token" in wrong.text
    assert anonymous.get("/").status_code == 303
    assert anonymous.get("/api/stats", headers={"Authorization": "Bearer guess"}).status_code == 401

    # Scripts may send the token as a bearer token; people sign in with it.
    script = anonymous.get("/api/stats", headers={"Authorization": f"Bearer {TOKEN}"})
    assert script.status_code == 200 and script.json()["pending"] == 3
    audio = anonymous.get(url("farm/review", "/audio"), headers={"Authorization": f"Bearer {TOKEN}"})
    assert audio.status_code == 200 and audio.content == recording("Farm1.wav").read_bytes()
    alice = signed_in(app, "alice", TOKEN)
    queue = alice.get("/")
    assert queue.status_code == 200 and "dog bark" in queue.text and "alice" in queue.text
    assert alice.get(url("farm/review", "/audio")).status_code == 200
    # The session is a signed cookie: another app (another key) does not accept it.
    other = client(create_app(state.desk, token=TOKEN))
    other.cookies = alice.cookies
    assert other.get("/").status_code == 303


def test_wrong_tokens_are_rate_limited_per_client_and_the_right_one_still_works(state):
    app = create_app(state.desk, token=TOKEN)  # the default limit: 10 wrong tokens, then one per 6 s
    mallory = TestClient(app, base_url=BASE, follow_redirects=False, client=("203.0.113.9", 40000))
    form = {"csrf": csrf_of(mallory.get("/signin").text), "name": "mallory"}
    for i in range(10):
        assert mallory.post("/signin", data={**form, "token": f"guess {i}"}).status_code == 401
    limited = mallory.post("/signin", data={**form, "token": "guess 10"})
    assert limited.status_code == 429 and 0 < int(limited.headers["retry-after"]) <= 6
    assert "Too many wrong tokens" in limited.text
    # Limited, the client learns nothing: even the right token, at sign-in or as a bearer token, gets 429.
    assert mallory.post("/signin", data={**form, "token": TOKEN}).status_code == 429
    bearer = mallory.get("/api/stats", headers={"Authorization": f"Bearer {TOKEN}"})
    assert bearer.status_code == 429 and bearer.headers["retry-after"]

    # Wrong bearer tokens count too; other clients and right tokens are not affected.
    eve = TestClient(app, base_url=BASE, client=("198.51.100.7", 40000))
    assert [eve.get("/api/stats", headers={"Authorization": f"Bearer x{i}"}).status_code
            for i in range(11)] == [401] * 10 + [429]
    for _ in range(20):  # right tokens cost nothing
        assert client(app).get("/api/stats", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    alice = signed_in(app, "alice", TOKEN)
    assert alice.get("/").status_code == 200


def test_sign_in_needs_a_name_and_only_redirects_within_the_site(state):
    c = client(create_app(state.desk))
    page = c.get("/signin?next=//evil.example/")
    assert 'name="token"' not in page.text  # no token configured: the name is enough
    assert c.post("/signin", data={"csrf": csrf_of(page.text), "name": "  "}).status_code == 400
    done = c.post("/signin", data={"csrf": csrf_of(page.text), "name": "bob", "next": "//evil.example/"})
    assert done.status_code == 303 and done.headers["location"] == "/"
    cookie = done.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie


def test_posts_without_the_csrf_token_or_from_another_origin_are_refused(state):
    app = create_app(state.desk)
    alice = signed_in(app)
    token = csrf_of(alice.get(url("farm/review")).text)
    target = url("farm/review", "/decision")
    assert alice.post(target, data={"action": "accept"}).status_code == 403
    assert alice.post(target, data={"action": "accept", "csrf": token[:-2] + "xx"}).status_code == 403
    evil = alice.post(target, data={"action": "accept", "csrf": token}, headers={"Origin": "http://evil.example"})
    assert evil.status_code == 403 and "another site" in evil.text
    # Another session's token is no good either.
    bob = signed_in(app, "bob")
    assert bob.post(target, data={"action": "accept", "csrf": token}).status_code == 403
    assert state.desk.task("farm/review") is not None and state.desk.stats().decided == 0
    assert sorted(f.clip.clip_id for f in state.final_labels()) == ["green", "harbor", "smith"]  # not reviewed

    ok = alice.post(target, data={"action": "accept", "csrf": token}, headers={"Origin": BASE})
    assert ok.status_code == 303 and state.desk.task("farm/review") is None
    assert [f.clip.clip_id for f in state.final_labels()] == ["farm"]


def test_audio_is_served_with_range_requests(state):
    alice = signed_in(create_app(state.desk))
    data = recording("Farm1.wav").read_bytes()
    audio = url("farm/review", "/audio")
    whole = alice.get(audio)
    assert whole.status_code == 200 and whole.headers["accept-ranges"] == "bytes" and whole.content == data
    assert whole.headers["content-type"].startswith("audio/")
    part = alice.get(audio, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == data[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(data)}"
    tail = alice.get(audio, headers={"Range": "bytes=-64"})
    assert tail.status_code == 206 and tail.content == data[-64:]
    beyond = alice.get(audio, headers={"Range": f"bytes={len(data)}-"})
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{len(data)}"
    # No audio: an unknown task, or a clip whose file is not there.
    assert alice.get(url("nope/review", "/audio")).status_code == 404
    assert alice.get(url("hostile/review", "/audio")).status_code == 404


def test_an_unknown_task_is_404(state):
    alice = signed_in(create_app(state.desk))
    missing = alice.get(url("nope/review"))
    assert missing.status_code == 404 and "No such task" in missing.text
    token = csrf_of(alice.get("/").text)
    assert alice.post(url("nope/review", "/decision"), data={"csrf": token, "action": "accept"}).status_code == 404


def test_a_leased_task_cannot_be_opened_or_decided_by_another_reviewer(state):
    app = create_app(state.desk)
    alice, bob = signed_in(app, "alice"), signed_in(app, "bob")
    assert alice.get(url("farm/review")).status_code == 200
    taken = bob.get(url("farm/review"))
    assert taken.status_code == 409 and "alice" in taken.text and "Task taken" in taken.text
    token = csrf_of(taken.text)
    refused = bob.post(url("farm/review", "/decision"), data={"csrf": token, "action": "unusable"})
    assert refused.status_code == 409 and state.desk.task("farm/review").lease_owner == "alice"
    assert "alice (you)" in alice.get("/").text and "alice" in bob.get("/").text
    # Released, the task is bob's to take.
    assert alice.post(url("farm/review", "/release"), data={"csrf": csrf_of(alice.get("/").text)}).status_code == 303
    assert bob.get(url("farm/review")).status_code == 200


def test_a_decision_leads_to_the_next_task_and_is_idempotent(state):
    alice = signed_in(create_app(state.desk))
    token = csrf_of(alice.get(url("farm/review")).text)
    form = {"csrf": token, "action": "accept"}
    first = alice.post(url("farm/review", "/decision"), data=form)
    assert first.status_code == 303 and first.headers["location"] == url("hostile/review")  # the worst left
    again = alice.post(url("farm/review", "/decision"), data=form)
    assert again.status_code == 303 and "decided already" in alice.get(again.headers["location"]).text
    farm = [f for f in state.final_labels() if f.clip.clip_id == "farm"]
    assert len(farm) == 1 and farm[0].label == "dog bark" and farm[0].source == pb.LABEL_SOURCE_HUMAN
    assert farm[0].review_action == pb.REVIEW_ACTION_ACCEPT
    stats = alice.get("/api/stats").json()
    assert (stats["decided"], stats["accepted"], stats["pending"]) == (1, 1, 2)


def test_bad_decisions_are_400_with_the_reason_and_the_task_stays(state):
    alice = signed_in(create_app(state.desk))
    no_label = decide(alice, "fire/review", "correct", label="   ")
    assert no_label.status_code == 400 and "no usable label" in no_label.text and 'id="correction"' in no_label.text
    no_hint = decide(alice, "fire/review", "relabel", hint="")
    assert no_hint.status_code == 400 and "hint is required" in no_hint.text
    assert decide(alice, "fire/review", "delete").status_code == 400
    assert state.desk.task("fire/review") is not None


def test_skipping_releases_the_task_and_opens_the_one_after_it(state):
    alice = signed_in(create_app(state.desk))
    token = csrf_of(alice.get(url("hostile/review")).text)
    skipped = alice.post("/next", data={"csrf": token, "skip": "hostile/review"})
    assert skipped.headers["location"] == url("farm/review")
    assert state.desk.task("hostile/review").lease_owner is None
    assert state.desk.task("farm/review").lease_owner == "alice"


def test_correction_suggestions_and_stats_api(state):
    alice = signed_in(create_app(state.desk))
    page = alice.get(url("fire/review")).text
    for label in ("rain", "fire crackle", "bird song", "ship horn", "hammer"):  # its own, then the dataset's
        assert f'<option value="{label}">' in page
    assert alice.get("/api/labels?dataset=site-a&q=sh").json() == {"labels": ["ship horn"]}
    assert alice.get("/api/labels?dataset=other").json() == {"labels": []}
    stats = alice.get("/api/stats?dataset=site-a").json()
    assert stats["dataset"] == "site-a" and stats["pending"] == 3 and stats["leased"] == 1
    assert stats["uplift"] is None


def test_finish_calls_back_once_and_only_where_there_is_one(state):
    finished = []
    done = threading.Event()
    app = create_app(state.desk, on_finish=lambda: (finished.append(1), done.set()))
    alice = signed_in(app)
    queue = alice.get("/")
    assert "Finish review" in queue.text
    page = alice.post("/finish", data={"csrf": csrf_of(queue.text)})
    assert page.status_code == 200 and "Review finished" in page.text
    assert alice.post("/finish", data={"csrf": csrf_of(queue.text)}).status_code == 200
    assert done.wait(10) and finished == [1]

    plain = signed_in(create_app(state.desk))
    queue = plain.get("/")
    assert "Finish review" not in queue.text
    assert plain.post("/finish", data={"csrf": csrf_of(queue.text)}).status_code == 404


def test_hostile_text_is_escaped_and_pages_carry_a_strict_csp(state):
    state.desk.claim("fire/review", '<img src=x onerror="window.__xss=6">')  # reviewer names are untrusted too
    alice = signed_in(create_app(state.desk))
    queue, task = alice.get("/"), alice.get(url("hostile/review"))
    for page in (queue, task):
        assert page.status_code == 200
        assert "&lt;script&gt;window.__xss=2&lt;/script&gt;" in page.text
        assert "<script>window" not in page.text and "<img" not in page.text and "<svg" not in page.text
        assert '" onmouseover' not in page.text
        csp = page.headers["content-security-policy"]
        for directive in ("default-src 'none'", "script-src 'self'", "style-src 'self'", "media-src 'self'",
                          "img-src 'self'", "form-action 'self'", "base-uri 'none'", "frame-ancestors 'none'"):
            assert directive in csp
        assert "unsafe-inline" not in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["referrer-policy"] == "same-origin" and page.headers["cache-control"] == "no-store"
        assert page.text.count("<script") == 1 and '<script src="/static/review.js" defer>' in page.text
        assert "style=" not in page.text and "<style" not in page.text
    assert "&lt;img src=x onerror=&#34;window.__xss=6&#34;&gt;" in queue.text  # the holder of the fire task
    assert "&#34; onmouseover=&#34;window.__xss=3&#34; x=&#34;" in task.text  # every label is on the task page
    assert "&lt;svg onload=window.__xss=4&gt;" in task.text and "&lt;img src=x onerror=alert(1)&gt;.wav" in task.text


def test_without_a_token_only_loopback_binds_and_host_names_are_accepted(state):
    with pytest.raises(ValueError, match="without an auth token"):
        check_bind("0.0.0.0", None)
    with pytest.raises(ValueError):
        check_bind("192.168.1.20", "")
    for host in ("127.0.0.1", "127.0.2.1", "::1", "localhost"):
        check_bind(host, None)
    check_bind("0.0.0.0", TOKEN)
    # A page elsewhere that rebinds its DNS name to 127.0.0.1 reaches the UI under its own host name: refused.
    rebound = TestClient(create_app(state.desk), base_url="http://evil.example:8080").get("/signin")
    assert rebound.status_code == 403 and "loopback" in rebound.text
    with_token = TestClient(create_app(state.desk, token=TOKEN), base_url="http://review.example")
    assert with_token.get("/signin").status_code == 200


def test_the_server_listens_on_a_free_port_and_stops(state):
    server = UiServer(create_app(state.desk), port=0)
    server.start()
    try:
        assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}/"
        with urllib.request.urlopen(server.url + "signin") as response:
            assert response.status == 200 and "Sign in" in response.read().decode()
            assert "default-src 'none'" in response.headers["content-security-policy"]
        taken = UiServer(create_app(state.desk), port=server.port)
        with pytest.raises(OSError, match="cannot serve the review UI"):
            taken.start()
    finally:
        server.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(server.url + "signin", timeout=5)
