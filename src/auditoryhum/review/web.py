"""The review desk's web UI: the queue, a task page that plays the clip, the decision forms, and progress.

Every label, tag, reason, uri and reviewer name is untrusted text (a model wrote the labels after listening to audio
that may contain speech): pages render it only through autoescaped templates, the script never builds HTML, and the
Content-Security-Policy forbids inline script and style, so hostile text renders inert. A reviewer signs in with a
name (and the token, when one is set), kept in a signed HttpOnly, SameSite=strict session cookie; every form carries
the session's CSRF token, and a POST from another origin is refused. Without a token the UI answers only requests
addressed to a loopback host name, so a web page cannot reach it through DNS rebinding. Wrong tokens, at sign-in or
as a bearer token, are rate-limited per client address (:class:`~auditoryhum.auth.Throttle`): past the limit the
client gets 429 with Retry-After, and no token of its is checked until then.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Callable
from urllib.parse import quote, urlencode

import jinja2
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from auditoryhum.auth import Throttle, bearer, check_bind, is_loopback, token_matches
from auditoryhum.review.desk import (MAX_REVIEWER_CHARS, LeaseHeld, ReviewDesk, ReviewError, TaskGone, TaskView,
                                     reviewer_name)
from auditoryhum.v1 import pipeline_pb2 as pb

__all__ = ["UiServer", "check_bind", "create_app"]  # check_bind: auditoryhum.auth's, here for the UI's callers

HERE = Path(__file__).parent
# Not "no-referrer": with it Chromium sends "Origin: null" on our own forms, and the Origin check could not tell
# them from a sandboxed page's. "same-origin" still sends nothing to any other site.
REFERRER_POLICY = "same-origin"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; media-src 'self'; img-src 'self'; "
       "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
ACTIONS = {"accept": pb.REVIEW_ACTION_ACCEPT, "correct": pb.REVIEW_ACTION_CORRECT,
           "unusable": pb.REVIEW_ACTION_UNUSABLE, "relabel": pb.REVIEW_ACTION_RELABEL}
QUEUE_ROWS = 200
TOP_TAGS = 10


def task_path(task_id: str, suffix: str = "") -> str:
    return f"/tasks/{quote(task_id, safe='')}{suffix}"  # a task id may hold any character, "/" included


class _Guard:
    """Security headers on every response; without a token, requests for a non-loopback host name are refused."""

    def __init__(self, app: ASGIApp, loopback_only: bool):
        self.app, self.loopback_only = app, loopback_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        static = scope["path"].startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"cache-control" or static]
                headers += [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                            (b"referrer-policy", REFERRER_POLICY.encode()), (b"x-frame-options", b"DENY"),
                            (b"cross-origin-resource-policy", b"same-origin")]
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        host = Request(scope).url.hostname or ""
        if self.loopback_only and not is_loopback(host):
            response = PlainTextResponse("this review UI answers loopback addresses only (no token is set)", 403)
            return await response(scope, receive, send_with_headers)
        await self.app(scope, receive, send_with_headers)


class _ReviewUi:
    def __init__(self, desk: ReviewDesk, token: str | None, on_finish: Callable[[], None] | None, secret_key: bytes,
                 throttle: Throttle):
        self.desk, self.token, self.on_finish, self.throttle = desk, token, on_finish, throttle
        # What a signed-in session holds to prove it gave the token: changing the token signs everyone out.
        self.auth_mark = hmac.new(secret_key, b"token:" + token.encode(), hashlib.sha256).hexdigest() if token else ""
        self.finished = threading.Event()
        self._finish_lock = threading.Lock()
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                                 undefined=jinja2.StrictUndefined)
        env.filters["task_url"] = task_path
        self.templates = Jinja2Templates(env=env, context_processors=[self._common])

    # -- identity, auth, CSRF ---------------------------------------------------------------------------------------

    def authorized(self, request: Request) -> bool:
        if self.token is None:
            return True
        given = bearer(request.headers.get("authorization"))
        if given is not None:
            if wait := self.throttle.retry_after(_client(request)):
                request.state.retry_after = wait  # not compared: refuse_api answers 429
            elif token_matches(given, self.token):
                return True
            else:
                self.throttle.failed(_client(request))
        return token_matches(request.session.get("auth"), self.auth_mark)

    def reviewer(self, request: Request) -> str | None:
        return request.session.get("reviewer") if self.authorized(request) else None

    def csrf(self, request: Request) -> str:
        if "csrf" not in request.session:
            request.session["csrf"] = secrets.token_urlsafe(32)
        return request.session["csrf"]

    def _common(self, request: Request) -> dict:
        return {"reviewer": request.session.get("reviewer"), "csrf": self.csrf(request),
                "flash": request.session.pop("flash", None), "can_finish": self.on_finish is not None}

    async def post_form(self, request: Request) -> FormData | Response:
        """The form of a POST from this origin with the session's CSRF token; otherwise a 403 page."""
        origin = request.headers.get("origin")
        if origin is not None and origin.lower() != f"{request.url.scheme}://{request.url.netloc}".lower():
            return self.message(request, 403, "Refused", "This form was sent from another site.")
        form = await request.form(max_files=0, max_fields=20)
        sent, expected = str(form.get("csrf", "")), request.session.get("csrf", "")
        if not expected or not token_matches(sent, expected):
            return self.message(request, 403, "Refused", "The form is stale or forged (CSRF check failed): reload "
                                "the page and try again.")
        return form

    def sign_in_first(self, request: Request) -> RedirectResponse:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if request.method != "GET":  # a form's target is no page to come back to
            target = "/"
        return RedirectResponse(f"/signin?{urlencode({'next': target})}", 303)

    def refuse_api(self, request: Request) -> JSONResponse:
        if wait := getattr(request.state, "retry_after", 0):
            return JSONResponse({"error": "too many wrong tokens from this address: try again later"}, 429,
                                headers={"Retry-After": str(math.ceil(wait))})
        return JSONResponse({"error": "a token is required: sign in, or send Authorization: Bearer <token>"}, 401,
                            headers={"WWW-Authenticate": "Bearer"})

    def message(self, request: Request, status: int, title: str, text: str, **extra) -> Response:
        return self.templates.TemplateResponse(request, "message.html", {"title": title, "text": text, **extra},
                                               status_code=status)

    # -- sign-in ----------------------------------------------------------------------------------------------------

    async def signin_page(self, request: Request) -> Response:
        return self._signin(request, _local(request.query_params.get("next", "/")))

    def _signin(self, request: Request, next_url: str, error: str = "", status: int = 200) -> Response:
        return self.templates.TemplateResponse(request, "signin.html", {
            "next_url": next_url, "error": error, "needs_token": self.token is not None,
            "max_name": MAX_REVIEWER_CHARS}, status_code=status)

    async def signin(self, request: Request) -> Response:
        form = await self.post_form(request)
        if isinstance(form, Response):
            return form
        next_url = _local(str(form.get("next", "/")))
        try:
            name = reviewer_name(str(form.get("name", "")))
        except ReviewError as exc:
            return self._signin(request, next_url, f"Give your name: {exc}.", 400)
        if self.token is not None:
            if wait := self.throttle.retry_after(_client(request)):  # refused before the token is even compared
                page = self._signin(request, next_url, f"Too many wrong tokens from your address: try again in "
                                    f"{math.ceil(wait)} s.", 429)
                page.headers["Retry-After"] = str(math.ceil(wait))
                return page
            if not token_matches(str(form.get("token", "")), self.token):
                self.throttle.failed(_client(request))
                return self._signin(request, next_url, "Wrong token.", 401)
        request.session.clear()  # a fresh session (and CSRF token) for the signed-in reviewer
        request.session.update(reviewer=name, auth=self.auth_mark, csrf=secrets.token_urlsafe(32))
        return RedirectResponse(next_url, 303)

    async def signout(self, request: Request) -> Response:
        form = await self.post_form(request)
        if isinstance(form, Response):
            return form
        request.session.clear()
        return RedirectResponse("/signin", 303)

    # -- pages ------------------------------------------------------------------------------------------------------

    async def queue(self, request: Request) -> Response:
        if not (reviewer := self.reviewer(request)):
            return self.sign_in_first(request)
        dataset = request.query_params.get("dataset", request.session.get("dataset", ""))
        request.session["dataset"] = dataset  # "next task" and the redirect after a decision keep to it
        tasks, stats, datasets = await run_in_threadpool(
            lambda: (self.desk.tasks(dataset, limit=QUEUE_ROWS), self.desk.stats(dataset), self.desk.datasets()))
        return self.templates.TemplateResponse(request, "queue.html", {
            "tasks": tasks, "stats": stats, "datasets": datasets, "dataset": dataset, "me": reviewer})

    async def task(self, request: Request) -> Response:
        if not (reviewer := self.reviewer(request)):
            return self.sign_in_first(request)
        task_id = request.path_params["task_id"]
        try:
            view = await run_in_threadpool(self.desk.claim, task_id, reviewer)
        except ReviewError as exc:
            return self.refused(request, exc)
        return await self.task_page(request, view)

    async def task_page(self, request: Request, view: TaskView, error: str = "", status: int = 200) -> Response:
        labels = await run_in_threadpool(self.desk.labels, view.dataset)
        options = list(dict.fromkeys([label for label, _ in view.scores] + labels))
        return self.templates.TemplateResponse(request, "task.html", {
            "task": view, "error": error, "label_options": options,
            "scores": sorted(view.scores, key=lambda s: -s[1]),
            "tags": sorted(view.tags, key=lambda t: -t[1])[:TOP_TAGS],
            "lease_left": max(0, round(((view.lease_expires or 0) - time.time()) / 60))}, status_code=status)

    def refused(self, request: Request, exc: ReviewError) -> Response:
        if isinstance(exc, LeaseHeld):
            return self.message(request, 409, "Task taken", "Another reviewer holds this task.",
                                holder=exc.holder, seconds_left=max(0, round(exc.expires - time.time())))
        if isinstance(exc, TaskGone):
            return self.message(request, 404, "No such task", "This task is unknown, or it has been decided.")
        return self.message(request, 400, "Refused", str(exc))

    async def decision(self, request: Request) -> Response:
        form = await self.post_form(request)
        if isinstance(form, Response):
            return form
        if not (reviewer := self.reviewer(request)):
            return self.sign_in_first(request)
        task_id = request.path_params["task_id"]
        action = ACTIONS.get(str(form.get("action", "")))
        if action is None:
            return self.message(request, 400, "Refused", "Unknown action: accept, correct, unusable or relabel.")
        decision = pb.ReviewDecision(task_id=task_id, action=action, label=str(form.get("label", "")),
                                     hint=str(form.get("hint", "")), reviewer=reviewer)
        try:
            outcome = await run_in_threadpool(self.desk.decide, decision)
        except (LeaseHeld, TaskGone) as exc:
            return self.refused(request, exc)
        except ReviewError as exc:  # a bad correction or hint: the task page again, with the reason
            view = await run_in_threadpool(self.desk.task, task_id)
            if view is None:
                return self.refused(request, exc)
            return await self.task_page(request, view, str(exc), 400)
        request.session["flash"] = ("That task was decided already; nothing changed." if outcome.duplicate
                                    else f"Saved: {form.get('action')} ({outcome.status}).")
        return await self.goto_next(request, reviewer)

    async def next_task(self, request: Request) -> Response:
        form = await self.post_form(request)
        if isinstance(form, Response):
            return form
        if not (reviewer := self.reviewer(request)):
            return self.sign_in_first(request)
        return await self.goto_next(request, reviewer, skip=str(form.get("skip", "")))

    async def goto_next(self, request: Request, reviewer: str, skip: str = "") -> Response:
        dataset = request.session.get("dataset", "")
        view = await run_in_threadpool(self.desk.next, reviewer, dataset, skip)
        if view is None:
            request.session["flash"] = " ".join(filter(None, [request.session.get("flash"),
                                                              "No task left to review here."]))
            return RedirectResponse("/", 303)
        return RedirectResponse(task_path(view.task_id), 303)

    async def release(self, request: Request) -> Response:
        form = await self.post_form(request)
        if isinstance(form, Response):
            return form
        if not (reviewer := self.reviewer(request)):
            return self.sign_in_first(request)
        await run_in_threadpool(self.desk.release, request.path_params["task_id"], reviewer)
        request.session["flash"] = "Task released."
        return RedirectResponse("/", 303)

    async def finish(self, request: Request) -> Response:
        form = await self.post_form(request)
        if isinstance(form, Response):
            return form
        if not self.reviewer(request):
            return self.sign_in_first(request)
        if self.on_finish is None:
            return self.message(request, 404, "Not here", "This review has no finish step.")
        with self._finish_lock:  # once, however many times the button is pressed
            first = not self.finished.is_set()
            self.finished.set()
        page = self.message(request, 200, "Review finished",
                            "The pipeline goes on with your decisions. You can close this tab.", done=True)
        if first:  # after the page is sent: the caller may stop this server at once
            page.background = BackgroundTask(self.on_finish)
        return page

    # -- audio and JSON ---------------------------------------------------------------------------------------------

    async def audio(self, request: Request) -> Response:
        if not self.authorized(request):
            return self.refuse_api(request)
        path = await run_in_threadpool(self.desk.audio_path, request.path_params["task_id"])
        if path is None:
            return PlainTextResponse("no audio for this task", 404)
        return FileResponse(path)  # answers Range requests: 206 with Content-Range, 416 past the end

    async def api_stats(self, request: Request) -> Response:
        if not self.authorized(request):
            return self.refuse_api(request)
        stats = await run_in_threadpool(self.desk.stats, request.query_params.get("dataset", ""))
        body = {f.name: getattr(stats, f.name) for f in stats.DESCRIPTOR.fields}
        body["uplift"] = stats.mean_score_after - stats.mean_score_before if stats.scored_after else None
        return JSONResponse(body)

    async def api_labels(self, request: Request) -> Response:
        if not self.authorized(request):
            return self.refuse_api(request)
        q = request.query_params
        labels = await run_in_threadpool(self.desk.labels, q.get("dataset", ""), q.get("q", "")[:100])
        return JSONResponse({"labels": labels})


def _client(request: Request) -> str:
    """Whom the sign-in limit counts: the peer's address (behind a proxy, the proxy's, unless uvicorn trusts it to
    forward the client's)."""
    return request.client.host if request.client else ""


def _local(url: str) -> str:
    """Only a path on this site may be a redirect target after sign-in."""
    return url if url.startswith("/") and not url.startswith("//") and "\\" not in url else "/"


def create_app(desk: ReviewDesk, *, token: str | None = None, on_finish: Callable[[], None] | None = None,
               secret_key: bytes | None = None, throttle: Throttle | None = None) -> Starlette:
    """The UI over ``desk``. ``on_finish`` adds a "Finish review" button that calls it once. ``secret_key`` signs the
    session cookies (random by default: restarting signs everyone out; never derive it from the token, see
    :func:`auditoryhum.auth.session_key`). ``throttle`` limits wrong tokens per client (default: 10, then one per
    6 s)."""
    token = token or None
    secret_key = secret_key or secrets.token_bytes(32)
    ui = _ReviewUi(desk, token, on_finish, secret_key, throttle or Throttle())
    task = "/tasks/{task_id:path}"
    routes = [  # the task's sub-paths first: a task id may itself contain "/"
        Route(f"{task}/audio", ui.audio),
        Route(f"{task}/decision", ui.decision, methods=["POST"]),
        Route(f"{task}/release", ui.release, methods=["POST"]),
        Route(task, ui.task),
        Route("/", ui.queue),
        Route("/next", ui.next_task, methods=["POST"]),
        Route("/finish", ui.finish, methods=["POST"]),
        Route("/signin", ui.signin_page),
        Route("/signin", ui.signin, methods=["POST"]),
        Route("/signout", ui.signout, methods=["POST"]),
        Route("/api/stats", ui.api_stats),
        Route("/api/labels", ui.api_labels),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    middleware = [
        Middleware(_Guard, loopback_only=token is None),
        Middleware(SessionMiddleware, secret_key=secret_key.hex(), session_cookie="auditoryhum_review",
                   max_age=12 * 3600, same_site="strict"),
    ]
    return Starlette(routes=routes, middleware=middleware)


class UiServer:
    """Serves an app with uvicorn on a daemon thread. ``port=0`` picks a free port; :attr:`url` says which."""

    def __init__(self, app: ASGIApp, host: str = "127.0.0.1", port: int = 8080):
        self.app, self.host, self.port = app, host, port
        self.url = ""
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Returns once the server listens; an address that cannot be bound raises OSError here."""
        try:
            family = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)[0][0]
            sock = socket.create_server((self.host, self.port), family=family)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot serve the review UI on {self.host}:{self.port}: {exc.strerror}") from exc
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, lifespan="off", log_level="warning", access_log=False,
                                timeout_graceful_shutdown=5)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, name="review-ui",
                                        daemon=True)
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the review UI server on {self.host}:{self.port} stopped while starting")
            time.sleep(0.01)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{host}:{self.port}/"

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join()
