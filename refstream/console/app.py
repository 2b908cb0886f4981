"""The operator console: an aiohttp app, pages rendered on the server with Jinja2
(docs/console.md).

Handlers are thin: they read a fold of the log and the review queue (`sources`), turn
them into rows (`model`), and render a template. The only writes are control records,
appended with the CLI's own `append_control`, naming the signed-in person as the actor
and carrying their reason.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import click
from aiohttp import web
from jinja2 import Environment, FileSystemLoader, select_autoescape

from projections.report import major, money
from refstream.commands.payouts import default_run_id, parse_ts
from refstream.commands.review import ENDED, Queue
from refstream.console import model, security, sources
from refstream.console.sources import BrokerDown, Config, Folding, FoldSource, MissingTopic, Projector
from schemas import commands, control

log = logging.getLogger("refstream.console")

HERE = Path(__file__).resolve().parent
PER_PAGE = 50
MAX_REASON = 500
MAX_ACTOR = 80

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SESSION: web.RequestKey[security.Session] = web.RequestKey("session", security.Session)
FORM: web.RequestKey[Any] = web.RequestKey("form", object)

# --- formatting -----------------------------------------------------------------------------


def _money(amount: int | None, currency: str | None, signed: bool = False) -> str:
    if amount is None:
        return ""
    if not currency:
        return "—" if amount == 0 else str(amount)
    return money(amount, currency, signed=signed)


def _age(opened_at: int, now: float) -> str:
    seconds = now - opened_at
    if seconds < 0:
        return "-"
    hours = int(seconds // 3600)
    return f"{hours} h" if hours < 48 else f"{hours // 24} d"


def environment() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["money"] = _money
    env.filters["iso"] = model.iso
    env.filters["day"] = model.day
    env.filters["major"] = major
    env.filters["q"] = lambda s: quote(str(s), safe="")
    env.globals["age"] = _age
    env.globals["detail_rows"] = model.detail_rows
    return env


# --- the app --------------------------------------------------------------------------------


class Console:
    def __init__(self, cfg: Config, token: str, *, clock: Callable[[], float] = time.time,
                 projector: FoldSource | None = None) -> None:
        self.cfg = cfg
        self.token = token
        self.clock = clock
        self.sessions = security.Sessions()
        self.projector: FoldSource = projector or Projector(cfg)
        self.env = environment()
        self._rows: tuple[int, int, list[model.Row]] | None = None  # (id(fold), as_of, rows)

    # --- rendering ---

    def page(self, request: web.Request, template: str, status: int = 200, **ctx: Any) -> web.Response:
        session: security.Session | None = request.get(SESSION)
        html = self.env.get_template(template).render(
            session=session, csrf=session.csrf if session else "", env=self.cfg.topics.env,
            path=request.path, now=int(self.clock()), **ctx,
        )
        return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")

    def problem(self, request: web.Request, status: int, title: str, message: str, *,
                fix: str = "", refresh: bool = False) -> web.Response:
        return self.page(request, "problem.html", status=status, title=title, message=message, fix=fix,
                         refresh=refresh)

    async def fold(self) -> tuple[model.Fold, bool]:
        return await self.projector.current()

    # --- middleware ---

    @web.middleware
    async def guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Session, sign-in, CSRF, security headers, and never a traceback."""
        now = self.clock()
        session = self.sessions.get(request.cookies.get(security.COOKIE), now)
        fresh = None
        if session is None:
            session = fresh = self.sessions.anonymous(now)
        request[SESSION] = session
        try:
            resp = await self._guarded(request, handler, session)
        except web.HTTPException as exc:
            if 300 <= exc.status < 400:
                resp = redirect(exc.headers.get("Location", "/"))
            elif exc.status == 404:
                resp = self.problem(request, 404, "Not found",
                                    f"There is no page {request.path}.", fix="Use the menu above.")
            elif exc.status == 405:
                resp = self.problem(request, 405, "Not allowed",
                                    f"{request.method} is not how {request.path} is used.",
                                    fix="Use the links and forms of the console.")
            else:
                resp = self.problem(request, exc.status, exc.reason,
                                    f"The console refused this request: {exc.reason}.",
                                    fix="Use the links and forms of the console.")
        except BrokerDown as exc:
            resp = self.problem(request, 503, "Kafka cannot be reached", str(exc),
                                fix="Nothing was changed. Reload this page once the broker is back.")
        except MissingTopic as exc:
            resp = self.problem(
                request, 503, "A topic is missing",
                f"Kafka at {self.cfg.bootstrap} has no topic {exc}.",
                fix="Create the topics with `refstream topics create` (it leaves existing ones alone), or "
                    f"check REFSTREAM_ENV (now {self.cfg.topics.env!r}) and REFSTREAM_KAFKA_BOOTSTRAP.")
        except Folding:
            resp = self.problem(request, 503, "Reading the log",
                                "The console is folding the log for the first time. This page reloads "
                                "itself until it is done.", refresh=True)
        except Exception:
            ref = secrets.token_hex(4)
            log.exception("page failed", extra={"path": request.path, "error_ref": ref})
            resp = self.problem(request, 500, "Something went wrong",
                                f"The console could not show {request.path} (error {ref}).",
                                fix=f"Nothing was changed. Try again; if it fails again, the console's log "
                                    f"has the details under error_ref {ref}.")
        for k, v in security.HEADERS.items():
            resp.headers.setdefault(k, v)
        if fresh is not None and session is request.get(SESSION):
            self._set_cookie(resp, fresh)
        return resp

    async def _guarded(self, request: web.Request, handler: Handler, session: security.Session
                       ) -> web.StreamResponse:
        if request.method == "POST":
            form = await request.post()
            request[FORM] = form
            given = form.get("csrf")
            if not security.csrf_ok(session, given if isinstance(given, str) else None):
                return self.problem(
                    request, 403, "Form refused",
                    "This form did not carry the console's security token for your session, so it was "
                    "refused and nothing was changed.",
                    fix="Go back, reload the page and send the form again.")
        public = request.path in ("/signin", "/healthz") or request.path.startswith("/static/")
        if not public and not session.signed_in:
            if request.method == "POST":
                return self.problem(request, 403, "Signed out",
                                    "Your session has ended, so nothing was changed.",
                                    fix="Sign in again and send the form again.")
            return redirect("/signin?" + urlencode({"next": request.path_qs}))
        return await handler(request)

    def _set_cookie(self, resp: web.StreamResponse, s: security.Session) -> None:
        resp.set_cookie(security.COOKIE, s.sid, httponly=True, samesite="Strict", path="/",
                        max_age=security.MAX_S)

    # --- sign-in ---

    async def signin_form(self, request: web.Request) -> web.Response:
        nxt = _local(request.query.get("next", "/"))
        return self.page(request, "signin.html", next=nxt, error="", name="")

    async def signin(self, request: web.Request) -> web.StreamResponse:
        form = request[FORM]
        name = str(form.get("name", "")).strip()
        token = str(form.get("token", ""))
        nxt = _local(str(form.get("next", "/")))
        error = ""
        if not name:
            error = "Enter your name: it is recorded with every action you take."
        elif len(name) > MAX_ACTOR or not name.isprintable():
            error = f"Your name must be printable and at most {MAX_ACTOR} characters."
        elif not security.token_matches(token, self.token):
            log.warning("sign-in refused", extra={"actor": name[:MAX_ACTOR]})
            error = "That token is not the console's token (REFSTREAM_CONSOLE_TOKEN). Check it and try again."
        if error:
            return self.page(request, "signin.html", status=401 if "token" in error else 400, next=nxt,
                             error=error, name=name)
        session = self.sessions.sign_in(request[SESSION], name, self.clock())
        log.info("signed in", extra={"actor": name})
        resp = redirect(nxt)
        self._set_cookie(resp, session)
        request[SESSION] = session
        return resp

    async def signout(self, request: web.Request) -> web.StreamResponse:
        session: security.Session = request[SESSION]
        self.sessions.end(session)
        resp = redirect("/signin")
        resp.del_cookie(security.COOKIE, path="/")
        return resp

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    # --- overview ---

    def _as_of(self, request: web.Request) -> tuple[int, str]:
        raw = request.query.get("as_of", "").strip()
        if not raw:
            return int(self.clock()), ""
        try:
            return parse_ts(raw), ""
        except click.BadParameter as exc:
            return int(self.clock()), exc.format_message()

    async def overview(self, request: web.Request) -> web.Response:
        as_of, as_of_error = self._as_of(request)
        f, fresh = await self.fold()
        q, health, lag = await asyncio.gather(sources.queue(self.cfg), sources.health(self.cfg),
                                              sources.lag(self.cfg))
        runs = model.runs(f)[:5]
        return self.page(
            request, "overview.html", title="Overview", fold=f, fresh=fresh, as_of=as_of,
            as_of_text=request.query.get("as_of", ""), as_of_error=as_of_error,
            totals=model.totals(f, as_of), referrers=len(f.engine.referrers),
            referrals=sum(len(s.referrals) for s in f.engine.referrers.values()),
            open_cases=len(q.open), runs=runs, health=health, lag=lag, group=self.cfg.app_id,
        )

    # --- referrers ---

    def _all_rows(self, f: model.Fold, as_of: int) -> list[model.Row]:
        # one list per fold and as-of day: paging and sorting 10,000 referrers reuse it
        key = (id(f), as_of // 60)
        if self._rows is None or self._rows[:2] != key:
            self._rows = (key[0], key[1], model.rows(f, as_of))
        return self._rows[2]

    async def referrers(self, request: web.Request) -> web.Response:
        f, fresh = await self.fold()
        now = int(self.clock())
        qs = request.query
        sort = qs.get("sort", "ucc")
        sort = sort if sort in model.SORTS else "ucc"
        desc = qs.get("dir", "asc") == "desc"
        try:
            page_no = int(qs.get("page", "1"))
        except ValueError:
            page_no = 1
        currency = qs.get("currency", "")
        all_rows = self._all_rows(f, now)
        currencies = sorted({r.currency for r in all_rows if r.currency})
        page = model.select(all_rows, q=qs.get("q", ""), currency=currency, sort=sort, desc=desc,
                            page=page_no, per_page=PER_PAGE)

        def link(**change: Any) -> str:
            params = {"q": qs.get("q", ""), "currency": currency, "sort": sort,
                      "dir": "desc" if desc else "asc", "page": str(page.page)}
            params.update({k: str(v) for k, v in change.items()})
            return "/referrers?" + urlencode({k: v for k, v in params.items() if v not in ("",)})

        return self.page(request, "referrers.html", title="Referrers", fold=f, fresh=fresh, page=page,
                         q=qs.get("q", ""), currency=currency, currencies=currencies, sort=sort, desc=desc,
                         link=link, sorts=model.SORTS, referrers=len(f.engine.referrers))

    async def referrer(self, request: web.Request) -> web.Response:
        ucc = request.match_info["ucc"]
        f, fresh = await self.fold()
        now = int(self.clock())
        d = model.detail(f, ucc, now)
        if d is None:
            return self.problem(request, 404, "No such referrer",
                                f"There is no referrer {ucc!r} in the log (a referrer appears with its first "
                                f"signup).", fix="Search for it on the Referrers page.")
        return self.page(request, "referrer.html", title=ucc, fold=f, fresh=fresh, d=d,
                         decisions=model.decisions(f), effects=f.effects)

    # --- review ---

    async def review(self, request: web.Request) -> web.Response:
        f, fresh = await self.fold()
        q = await sources.queue(self.cfg)
        now = int(self.clock())
        open_ = [model.case_view(f, s, q.status(s.case_id), q.decisions.get(s.case_id), now) for s in q.open]
        ended = [model.case_view(f, s, q.status(s.case_id), q.decisions.get(s.case_id), now)
                 for s in reversed(q.all) if q.status(s.case_id) != commands.CASE_OPEN]
        return self.page(request, "review.html", title="Review queue", fold=f, fresh=fresh, open=open_,
                         ended=ended)

    async def case(self, request: web.Request) -> web.Response:
        case_id = request.match_info["case_id"]
        f, fresh = await self.fold()
        q = await sources.queue(self.cfg)
        state = q.cases.get(case_id)
        if state is None:
            return self.problem(request, 404, "No such case",
                                f"There is no review case {case_id!r} on {self.cfg.topics.review_cases}.",
                                fix="The Review page lists the open cases with their ids.")
        view = model.case_view(f, state, q.status(case_id), q.decisions.get(case_id), int(self.clock()))
        return self.page(request, "case.html", title=f"Case {case_id}", fold=f, fresh=fresh, c=view,
                         error="", reason="", decidable=_decidable(q, case_id))

    async def decide(self, request: web.Request) -> web.Response:
        case_id = request.match_info["case_id"]
        form = request[FORM]
        verdict = str(form.get("decision", ""))
        reason = str(form.get("reason", "")).strip()
        q = await sources.queue(self.cfg)
        state = q.cases.get(case_id)
        if state is None:
            return self.problem(request, 404, "No such case",
                                f"There is no review case {case_id!r} on {self.cfg.topics.review_cases}, so "
                                f"nothing was decided.", fix="The Review page lists the open cases.")
        error = ""
        if verdict not in ("approve", "reject"):
            error = "Choose Approve or Reject."
        elif not reason:
            error = "Give a reason: it is kept with the decision for the audit trail."
        elif len(reason) > MAX_REASON:
            error = f"The reason is {len(reason)} characters long; keep it under {MAX_REASON}."
        elif not _decidable(q, case_id):
            error = f"This case is already {q.status(case_id)}: a second decision would change nothing."
        if error:
            f, fresh = await self.fold()
            view = model.case_view(f, state, q.status(case_id), q.decisions.get(case_id), int(self.clock()))
            return self.page(request, "case.html", status=400, title=f"Case {case_id}", fold=f, fresh=fresh,
                             c=view, error=error, reason=reason, decidable=_decidable(q, case_id))
        actor = request[SESSION].actor or ""
        decision = control.ReviewDecision(case_id, state.ucc, verdict == "approve", reason, int(self.clock()),
                                          actor)
        partition, offset = await sources.append(self.cfg, decision, f"The decision on case {case_id}")
        self.projector.invalidate()  # the next page folds the log again: it shows what this did
        log.info("decision appended", extra={"case_id": case_id, "approve": decision.approve, "actor": actor,
                                             "partition": partition, "offset": offset})
        return redirect(f"/review/{quote(case_id, safe='')}?decided={offset}")

    # --- payouts ---

    async def payouts(self, request: web.Request) -> web.Response:
        f, fresh = await self.fold()
        now = int(self.clock())
        return self.page(request, "payouts.html", title="Payouts", fold=f, fresh=fresh, runs=model.runs(f),
                         suggested=model.iso(now).replace(" UTC", "").replace(" ", "T") + ":00Z", error="",
                         as_of_text="", run_id="")

    def _run_params(self, as_of_text: str, run_id: str) -> tuple[int | None, str, str]:
        """(as of, run id, error)."""
        if not as_of_text.strip():
            return None, run_id, "Enter the time to pay up to (as of)."
        try:
            at = parse_ts(as_of_text)
        except click.BadParameter as exc:
            return None, run_id, exc.format_message()
        if at > self.clock():
            return None, run_id, (f"{as_of_text} is in the future: a run pays what is payable by its as-of "
                                  f"time, so a later one would pay entries before their hold ends. Choose a "
                                  f"time up to now.")
        run_id = run_id.strip() or default_run_id(at)
        if len(run_id) > 120 or not run_id.isprintable():
            return None, run_id, "A run id is printable and at most 120 characters."
        return at, run_id, ""

    async def preview(self, request: web.Request) -> web.Response:
        as_of_text = request.query.get("as_of", "")
        at, run_id, error = self._run_params(as_of_text, request.query.get("run_id", ""))
        f, fresh = await self.fold()
        if at is None:
            return self.page(request, "payouts.html", status=400, title="Payouts", fold=f, fresh=fresh,
                             runs=model.runs(f), suggested="", error=error, as_of_text=as_of_text,
                             run_id=request.query.get("run_id", ""))
        run = control.PayoutRun(run_id, at, int(self.clock()), request[SESSION].actor or "", "")
        return self.page(request, "preview.html", title="Payout preview", fold=f, fresh=fresh,
                         p=model.preview(f, run), as_of_text=as_of_text, error="", reason="")

    async def run(self, request: web.Request) -> web.Response:
        form = request[FORM]
        as_of_text = str(form.get("as_of", ""))
        at, run_id, error = self._run_params(as_of_text, str(form.get("run_id", "")))
        reason = str(form.get("reason", "")).strip()
        if at is not None and not error:
            if form.get("confirm") != "yes":
                error = "Tick the box to confirm you have checked the amounts."
            elif not reason:
                error = "Give a reason: it is kept with the run for the audit trail."
            elif len(reason) > MAX_REASON:
                error = f"The reason is {len(reason)} characters long; keep it under {MAX_REASON}."
        actor = request[SESSION].actor
        if error or at is None:
            f, fresh = await self.fold()
            if at is None:
                return self.page(request, "payouts.html", status=400, title="Payouts", fold=f, fresh=fresh,
                                 runs=model.runs(f), suggested="", error=error, as_of_text=as_of_text,
                                 run_id=run_id)
            run = control.PayoutRun(run_id, at, int(self.clock()), actor or "", "")
            return self.page(request, "preview.html", status=400, title="Payout preview", fold=f, fresh=fresh,
                             p=model.preview(f, run), as_of_text=as_of_text, error=error, reason=reason)
        record = control.PayoutRun(run_id, at, int(self.clock()), actor or "", reason)
        partition, offset = await sources.append(self.cfg, record, f"The payout run {run_id!r}")
        self.projector.invalidate()
        log.info("payout run appended", extra={"run_id": run_id, "as_of": at, "actor": actor,
                                               "partition": partition, "offset": offset})
        return redirect(f"/payouts/runs/{quote(run_id, safe='')}?appended={offset}")

    def _no_run(self, request: web.Request, run_id: str) -> web.Response:
        return self.problem(request, 404, "No such payout run",
                            f"There is no payout run {run_id!r} in the log.",
                            fix="The Payouts page lists every run.")

    def _find_run(self, f: model.Fold, run_id: str) -> model.RunView | None:
        return next((r for r in model.runs(f) if r.run.run_id == run_id), None)

    async def run_page(self, request: web.Request) -> web.Response:
        run_id = request.match_info["run_id"]
        f, fresh = await self.fold()
        view = self._find_run(f, run_id)
        if view is None:
            return self._no_run(request, run_id)
        return self.page(request, "run.html", title=f"Payout run {run_id}", fold=f, fresh=fresh, r=view,
                         outcomes=model.outcomes(f), appended=request.query.get("appended"))

    async def run_csv(self, request: web.Request) -> web.StreamResponse:
        run_id = request.match_info["run_id"]
        f, _ = await self.fold()
        view = self._find_run(f, run_id)
        if view is None:
            return self._no_run(request, run_id)
        name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in run_id)
        return web.Response(text=model.csv_of(view, model.outcomes(f)), content_type="text/csv",
                            charset="utf-8",
                            headers={"Content-Disposition": f'attachment; filename="payouts-{name}.csv"'})

    # --- rules ---

    async def rules(self, request: web.Request) -> web.Response:
        from refstream.commands.rules import describe

        f, fresh = await self.fold()
        now = int(self.clock())
        revs = model.revisions(f, now)
        current = next((r for r in revs if r.in_force), None)
        assignments = [r for r in f.control if isinstance(r, control.CampaignAssignment)]
        in_force = f.engine.book.at(now)
        return self.page(request, "rules.html", title="Rules", fold=f, fresh=fresh, revisions=revs,
                         current=current,
                         describe=describe(in_force).removeprefix("ok: ") if f.has_revision else "",
                         terms=_money_terms(in_force) if f.has_revision else [],
                         assignments=list(reversed(assignments)))


def _money_terms(rules: Any) -> list[tuple[str, list[tuple[str, str]]]]:
    """The rules' amounts per currency, in the currency's units (the file has minor units)."""
    out = []
    for cur, c in sorted(rules.currencies.items()):
        rows = [("signup bonus", _money(c.signup_bonus, cur) if cur == rules.currency else "— (paid in "
                 f"{rules.currency.upper()})"),
                ("purchase bonus", _money(c.purchase_bonus, cur)),
                ("cap per referral",
                 "none" if c.max_reward_per_referral is None else _money(c.max_reward_per_referral, cur)),
                ("minimum payout", _money(c.min_payout, cur)),
                ("review a reward above", "never" if c.review_above is None else _money(c.review_above, cur))]
        out.append((cur, rows))
    return out


def redirect(location: str) -> web.Response:
    """303 See Other: after a form, the browser GETs the page that shows the result."""
    return web.Response(status=303, headers={"Location": location})


def _local(path: str) -> str:
    """Only a path of this site to go back to after sign-in (never another host)."""
    return path if path.startswith("/") and not path.startswith("//") and "\\" not in path else "/"


def _decidable(q: Queue, case_id: str) -> bool:
    state = q.cases.get(case_id)
    return state is not None and state.status not in ENDED and case_id not in q.decisions


CONSOLE: web.AppKey[Console] = web.AppKey("console", Console)


def make_app(cfg: Config, token: str, *, clock: Callable[[], float] = time.time,
             projector: FoldSource | None = None) -> web.Application:
    """The console's app. `projector` (tests): where the fold of the log comes from."""
    c = Console(cfg, security.check_token(token), clock=clock, projector=projector)
    app = web.Application(middlewares=[c.guard], client_max_size=64 * 1024)
    app[CONSOLE] = c
    app.router.add_get("/healthz", c.healthz)
    app.router.add_get("/signin", c.signin_form)
    app.router.add_post("/signin", c.signin)
    app.router.add_post("/signout", c.signout)
    app.router.add_get("/", c.overview)
    app.router.add_get("/referrers", c.referrers)
    app.router.add_get("/referrers/{ucc}", c.referrer)
    app.router.add_get("/review", c.review)
    app.router.add_get("/review/{case_id}", c.case)
    app.router.add_post("/review/{case_id}", c.decide)
    app.router.add_get("/payouts", c.payouts)
    app.router.add_get("/payouts/preview", c.preview)
    app.router.add_post("/payouts/run", c.run)
    app.router.add_get("/payouts/runs/{run_id}.csv", c.run_csv)
    app.router.add_get("/payouts/runs/{run_id}", c.run_page)
    app.router.add_get("/rules", c.rules)
    app.router.add_static("/static/", HERE / "static", show_index=False)
    return app
