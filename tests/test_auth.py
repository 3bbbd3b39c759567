"""Tokens, sessions and the metrics endpoint of a real review service process (a real Kafka broker on this module's
ports, 30200-30299), and the per-client limit on wrong tokens."""

from __future__ import annotations

import hashlib
import secrets
import signal
import urllib.error
import urllib.request
from typing import Iterator

import httpx
import itsdangerous
import pytest
from starlette.testclient import TestClient

from auditoryhum.auth import MIN_TOKEN_CHARS, Throttle
from auditoryhum.review.web import create_app
from auditoryhum.service.local import LocalStack
from tests.review_state import csrf_of, review_state

SHORT_TOKEN = "hunter2hunter2"  # 14 characters: a human's pick, in any wordlist
COOKIE = "auditoryhum_review"


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[LocalStack]:
    """Kafka and the review service alone (it runs no model: no Triton)."""
    stack = LocalStack(tmp_path_factory.mktemp("auth-stack"), kafka_port=30200, port_base=30251, metrics_base=30261,
                       triton_port=None, ui_port=30271)
    stack.start_kafka()
    try:
        yield stack
    finally:
        stack.down()


@pytest.fixture(scope="module")
def review(stack) -> LocalStack:
    """The review service with a short token and no session secret, as a careless deployment would run it."""
    stack.start("review", env={"AUDITORYHUM_AUTH_TOKEN": SHORT_TOKEN})
    return stack


def ui_url(stack: LocalStack) -> str:
    return f"http://127.0.0.1:{stack.ui_port}"


def anonymous_cookie(stack: LocalStack) -> str:
    """The session cookie anyone gets from the sign-in page (it holds a CSRF token)."""
    page = httpx.get(ui_url(stack) + "/signin")
    assert page.status_code == 200
    return page.cookies[COOKIE]


def token_derived_key(token: str) -> bytes:
    """How the service derived its cookie-signing key before: from the token alone."""
    return hashlib.sha256(b"auditoryhum review session\0" + token.encode()).digest()


def verifies(cookie: str, key: bytes) -> bool:
    """Starlette's SessionMiddleware signature check, run offline by an attacker holding a cookie."""
    try:
        itsdangerous.TimestampSigner(key.hex()).unsign(cookie)
        return True
    except itsdangerous.BadSignature:
        return False


@pytest.fixture(scope="module")
def state_for_oracle():
    return review_state([], fraction=0.5)


def test_an_anonymous_cookie_lets_no_one_test_token_guesses_offline(review, state_for_oracle):
    cookie = anonymous_cookie(review)
    wordlist = ["password", "letmein", "auditoryhum", "hunter2", SHORT_TOKEN, SHORT_TOKEN + "!"]
    assert not [guess for guess in wordlist if verifies(cookie, token_derived_key(guess))]
    # The same guessing against a cookie whose key was derived from the token finds it: the check can fail.
    leaky = create_app(state_for_oracle.desk, token=SHORT_TOKEN, secret_key=token_derived_key(SHORT_TOKEN))
    leaked = TestClient(leaky, base_url="http://127.0.0.1").get("/signin").cookies[COOKIE]
    assert [guess for guess in wordlist if verifies(leaked, token_derived_key(guess))] == [SHORT_TOKEN]


def test_a_short_token_and_a_missing_session_secret_are_warned_about_at_start(review):
    log = (review.home / "review.log").read_text()
    assert f"AUDITORYHUM_AUTH_TOKEN has {len(SHORT_TOKEN)} characters: use {MIN_TOKEN_CHARS} or more" in log
    assert "AUDITORYHUM_SESSION_SECRET is not set" in log and "a restart signs every reviewer out" in log
    assert SHORT_TOKEN not in log


def test_metrics_answer_on_metrics_only(review):
    base = f"http://{review.metrics_address('review')}"
    assert b"auditoryhum_consumer_lag" in urllib.request.urlopen(base + "/metrics", timeout=5).read()
    for path in ("/", "/index.html", "/metrics/", "/metrics/extra", "/favicon.ico", "/../etc/passwd"):
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(base + path, timeout=5)
        assert answer.value.code == 404, path


def test_with_a_session_secret_sessions_survive_a_restart(review):
    secret = secrets.token_urlsafe(48)
    token = secrets.token_urlsafe(30)
    env = {"AUDITORYHUM_AUTH_TOKEN": token, "AUDITORYHUM_SESSION_SECRET": secret}
    review.signal("review")
    log = review.home / "review.log"
    before = len(log.read_text())
    review.start("review", env=env)
    with httpx.Client(base_url=ui_url(review)) as alice:
        form = {"csrf": csrf_of(alice.get("/signin").text), "name": "alice", "token": token}
        assert alice.post("/signin", data=form).status_code == 303
        assert alice.get("/", follow_redirects=False).status_code == 200
        review.signal("review", signal.SIGTERM)
        review.start("review", env=env)
        assert alice.get("/", follow_redirects=False).status_code == 200  # still signed in
        assert not verifies(alice.cookies[COOKIE], token_derived_key(token))
    assert "AUDITORYHUM_SESSION_SECRET" not in log.read_text()[before:]


# -- the wrong-token limit's bookkeeping ---------------------------------------------------------------------

class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_limit_refills_over_time():
    clock = Clock()
    throttle = Throttle(burst=3, refill_s=10, clock=clock)
    for _ in range(3):
        assert throttle.retry_after("a") == 0
        throttle.failed("a")
    assert throttle.retry_after("a") == 10 and throttle.retry_after("b") == 0
    clock.now += 4
    assert throttle.retry_after("a") == pytest.approx(6)
    clock.now += 6
    assert throttle.retry_after("a") == 0  # one try back, not the whole burst
    throttle.failed("a")
    assert throttle.retry_after("a") == 10


def test_the_limit_keeps_a_bounded_number_of_clients():
    throttle = Throttle(burst=2, refill_s=60, max_clients=100)
    for i in range(10_000):
        throttle.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(throttle) == 100
    throttle.failed("10.0.39.15")  # the latest clients are those kept
    throttle.failed("10.0.39.15")
    assert throttle.retry_after("10.0.39.15") > 0
