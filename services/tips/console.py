"""The analysts' console: the tip queue and each tip's page, in plain HTML forms (no script).

``GET /analyst`` asks for the analyst's token and keeps it in a cookie (HttpOnly,
SameSite=Strict, Secure when the public URL is https, path ``/analyst``); every page after
that reads the analyst from it. ``/analyst/tips`` is the queue (life-safety and open tips
first, ``?status=``), ``/analyst/tips/{id}`` a tip: its words, photos, escalation, thread, and
the forms that act on it (answer in the thread, move, assign, change the life-safety flag
with a reason, split a folded duplicate, close with a disposition). ``/analyst/phone`` is
the call-taker's form for a tip by phone. Every form posts back and is redirected (no double
submission on reload); a POST whose Origin is not ours is refused (403); errors show on the
page naming the field. The tipster's identity is not on any page: there is nothing to show.
"""

from __future__ import annotations

import asyncio
import functools
import html
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

from aiohttp import web

from services.tips.analysts import Analyst, AnalystsFile
from services.tips.desk import Desk
from services.tips.intake import Intake, IntakeError
from services.tips.model import MOVES, Category, Disposition, Status
from services.tips.store import TipRow, TipStore

COOKIE = "tips_analyst"
HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    # same-origin, not no-referrer: with no-referrer a browser sends "Origin: null" on our
    # own form posts, and the Origin check below could not tell them from a foreign site's.
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
}
_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:0 auto;max-width:70rem;padding:1rem;"
    "line-height:1.45}table{border-collapse:collapse;width:100%}td,th{text-align:left;"
    "padding:.35rem .5rem;border-bottom:1px solid #ddd;vertical-align:top}"
    ".ls{color:#fff;background:#b00020;border-radius:3px;padding:0 .3rem;font-size:.8rem}"
    ".error{border:2px solid #b00020;padding:.5rem;color:#b00020}"
    ".msg{border-left:4px solid #888;padding:.3rem .7rem;margin:.4rem 0}"
    ".msg.ANALYST{border-color:#0b5}form{margin:.6rem 0}textarea{width:100%;min-height:5rem}"
    "fieldset{margin:.8rem 0}img{max-width:16rem;margin:.3rem}"
)

Page = Callable[[web.Request, Analyst], Awaitable[web.StreamResponse]]


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "—"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _page(title: str, body: str, analyst: Analyst | None = None) -> str:
    who = (
        f"<p>{html.escape(analyst.name)} ({html.escape(analyst.id)}) · "
        '<a href="/analyst/tips">queue</a> · <a href="/analyst/phone">phone tip</a> · '
        '<form method="post" action="/analyst/logout" style="display:inline">'
        '<button type="submit">sign out</button></form></p>'
        if analyst
        else ""
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{who}<h1>{html.escape(title)}</h1>{body}</body></html>"
    )


def _error(request: web.Request) -> str:
    field, reason = request.query.get("field"), request.query.get("error")
    if not reason:
        return ""
    label = f"<strong>{html.escape(field)}</strong>: " if field else ""
    return f'<p class="error" role="alert" id="error">{label}{html.escape(reason)}</p>'


def _options(values: list[str], selected: str | None = None) -> str:
    return "".join(
        f'<option value="{html.escape(v)}"{" selected" if v == selected else ""}>'
        f"{html.escape(v.replace('_', ' ').lower())}</option>"
        for v in values
    )


class Console:
    """The console's routes."""

    def __init__(
        self,
        *,
        intake: Intake,
        desk: Desk,
        store: TipStore,
        analysts: AnalystsFile,
        public_url: Callable[[], str],
        school_names: Callable[[], dict[str, str]],
        district_of: Callable[[str], str | None],
    ) -> None:
        self.intake = intake
        self.desk = desk
        self.store = store
        self.analysts = analysts
        self._public_url = public_url
        self._school_names = school_names
        self.district_of = district_of

    def add_routes(self, app: web.Application) -> None:
        """Mount the console under ``/analyst``."""
        app.router.add_get("/analyst", self._login_page)
        app.router.add_post("/analyst/login", self._login)
        app.router.add_post("/analyst/logout", self._logout)
        app.router.add_get("/analyst/tips", self._signed_in(self._queue))
        app.router.add_get("/analyst/tips/{tip_id}", self._signed_in(self._tip))
        app.router.add_post("/analyst/tips/{tip_id}/{action}", self._signed_in(self._act))
        app.router.add_get("/analyst/photo/{attachment_id}", self._signed_in(self._photo))
        app.router.add_get("/analyst/phone", self._signed_in(self._phone_form))
        app.router.add_post("/analyst/phone", self._signed_in(self._phone))

    # -- sign in ------------------------------------------------------------------------

    def _html(self, text: str, status: int = 200) -> web.Response:
        return web.Response(
            text=text, status=status, content_type="text/html", charset="utf-8", headers=HEADERS
        )

    def _same_origin(self, request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        if origin is None or origin == "null":
            return origin is None  # no Origin (an old browser, a tool) is same-site by cookie
        ours = urlsplit(self._public_url())
        theirs = urlsplit(origin)
        return (theirs.scheme, theirs.netloc) == (ours.scheme, ours.netloc) or (
            theirs.netloc == request.host
        )

    async def _login_page(self, request: web.Request) -> web.Response:
        body = (
            f"{_error(request)}"
            '<form method="post" action="/analyst/login"><label for="token">Analyst token'
            '</label><br><input id="token" name="token" type="password" autocomplete="off" '
            'size="48" required> <button type="submit">Sign in</button></form>'
        )
        return self._html(_page("Tips: analysts", body))

    async def _login(self, request: web.Request) -> web.Response:
        if not self._same_origin(request):
            return self._html(_page("Refused", "<p>This form posts to this site only.</p>"), 403)
        form = await request.post()
        token = str(form.get("token", "")).strip()
        if self.analysts.by_token(token) is None:
            raise web.HTTPSeeOther("/analyst?error=" + quote("unknown token; ask your admin"))
        response = web.HTTPSeeOther("/analyst/tips")
        response.set_cookie(
            COOKIE,
            token,
            httponly=True,
            samesite="Strict",
            secure=self._public_url().startswith("https://"),
            path="/analyst",
            max_age=12 * 3600,
        )
        raise response

    async def _logout(self, request: web.Request) -> web.Response:
        response = web.HTTPSeeOther("/analyst")
        response.del_cookie(COOKIE, path="/analyst")
        raise response

    def _signed_in(self, handler: Page) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def guarded(request: web.Request) -> web.StreamResponse:
            analyst = self.analysts.by_token(request.cookies.get(COOKIE, ""))
            if analyst is None:
                raise web.HTTPSeeOther("/analyst?error=" + quote("sign in first"))
            if request.method == "POST" and not self._same_origin(request):
                return self._html(
                    _page("Refused", "<p>This form posts to this site only.</p>"), 403
                )
            try:
                return await handler(request, analyst)
            except IntakeError as exc:
                if request.method == "GET":
                    return self._html(
                        _page("Not found", f"<p>{html.escape(exc.reason)}</p>", analyst), 404
                    )
                back = request.path.rsplit("/", 1)[0] if "/tips/" in request.path else request.path
                raise web.HTTPSeeOther(
                    f"{back}?field={quote(exc.field or '')}&error={quote(exc.reason)}"
                ) from None

        return guarded

    # -- the queue ----------------------------------------------------------------------

    async def _queue(self, request: web.Request, analyst: Analyst) -> web.Response:
        wanted = request.query.get("status") or ""
        tips = await asyncio.to_thread(self.store.tips_of, None, 1000)
        names = self._school_names()
        shown = [
            t for t in tips if analyst.may_see(t.district_id) and (not wanted or t.status == wanted)
        ]
        # What needs a human first: open life-safety tips, then open ones, oldest first.
        shown.sort(key=lambda t: (t.closed_at is not None, not t.life_safety, t.created_at))
        rows = "".join(
            f'<tr><td><a href="/analyst/tips/{t.tip_id}">{html.escape(t.code)}</a></td>'
            f"<td>{html.escape(names.get(t.school_id, t.school_id))}</td>"
            f"<td>{html.escape(t.category.replace('_', ' ').lower())}"
            f"{' <span class=ls>life-safety</span>' if t.life_safety else ''}</td>"
            f"<td>{html.escape(t.channel.lower())}</td><td>{html.escape(t.status)}</td>"
            f"<td>{html.escape(t.assigned_to or '—')}</td><td>{_when(t.created_at)}</td></tr>"
            for t in shown
        )
        statuses = '<option value="">every status</option>' + _options(
            [s.value for s in Status], wanted
        )
        body = (
            f'<form method="get"><select name="status">{statuses}</select> '
            '<button type="submit">show</button></form>'
            f"<p>{len(shown)} tips</p><table id=queue><thead><tr><th>code</th><th>school</th>"
            "<th>category</th><th>channel</th><th>status</th><th>assigned</th>"
            f"<th>received</th></tr></thead><tbody>{rows}</tbody></table>"
        )
        return self._html(_page("Tip queue", body, analyst))

    # -- one tip ------------------------------------------------------------------------

    async def _tip(self, request: web.Request, analyst: Analyst) -> web.Response:
        tip = await asyncio.to_thread(self.desk.tip_for, analyst, request.match_info["tip_id"])
        thread = await asyncio.to_thread(self.store.thread, tip.tip_id)
        escalation = await asyncio.to_thread(self.store.escalation, tip.tip_id)
        photos = await asyncio.to_thread(self.store.attachment_ids, tip.tip_id)
        return self._html(
            _page(
                f"Tip {tip.code}", self._tip_body(request, tip, thread, escalation, photos), analyst
            )
        )

    def _tip_body(
        self, request: web.Request, tip: TipRow, thread: Any, escalation: Any, photos: list[str]
    ) -> str:
        names = self._school_names()
        base = f"/analyst/tips/{tip.tip_id}"
        facts = (
            f"<p>{html.escape(names.get(tip.school_id, tip.school_id))} · "
            f"{html.escape(tip.category.replace('_', ' ').lower())} · by "
            f"{html.escape(tip.channel.lower())} · <span id=status>{html.escape(tip.status)}"
            f"</span>{' · <span class=ls>life-safety</span>' if tip.life_safety else ''}"
            f"{' · imminent' if tip.imminent else ''} · received {_when(tip.created_at)} · "
            f"first human {_when(tip.first_human_at)}</p>"
        )
        folded = (
            f'<p>Folded into <a href="/analyst/tips/{tip.primary_tip_id}">'
            f"{html.escape(tip.primary_tip_id)}</a></p>"
            f'<form method="post" action="{base}/split"><input name="reason" '
            'placeholder="why it is a different matter"> <button>split</button></form>'
            if tip.primary_tip_id
            else ""
        )
        calls = ""
        if escalation is not None:
            steps = " → ".join(html.escape(s["name"]) for s in escalation.chain) or "nobody"
            who = escalation.acked_by or "nobody yet"
            calls = (
                f"<p id=escalation>Call chain: {steps}; call {escalation.step + 1}; "
                f"confirmed by {html.escape(who)}</p>"
            )
        images = "".join(f'<img alt="photo" src="/analyst/photo/{a}">' for a in photos)
        messages = "".join(
            f'<div class="msg {m.author}"><strong>'
            f"{'Tipster' if m.author == 'TIPSTER' else html.escape(m.analyst_id or 'analyst')}"
            f"</strong> · {_when(m.created_at)}<p>{html.escape(m.text)}</p></div>"
            for m in thread
        )
        moves = sorted(MOVES[Status(tip.status)])
        closable = Status(tip.status) not in (
            Status.CLOSED_RESOLVED,
            Status.CLOSED_UNFOUNDED,
            Status.MERGED,
        )
        actions = ""
        if closable:
            actions = (
                f'<fieldset><legend>Answer in the thread</legend><form method="post" '
                f'action="{base}/message"><textarea name="text" id="reply"></textarea>'
                "<button>send</button></form></fieldset>"
            )
            if moves:
                actions += (
                    f'<fieldset><legend>Move</legend><form method="post" action="{base}/move">'
                    f'<select name="status">{_options([m.value for m in moves])}</select> '
                    '<input name="assigned_to" placeholder="assign to (staff id)"> '
                    "<button>move</button></form></fieldset>"
                )
            actions += (
                f'<fieldset><legend>Life-safety flag</legend><form method="post" '
                f'action="{base}/life-safety"><select name="life_safety">'
                f"{_options(['true', 'false'], str(tip.life_safety).lower())}</select> "
                '<input name="reason" placeholder="reason (required)" size="40"> '
                "<button>set</button></form></fieldset>"
                f'<fieldset><legend>Send to 911</legend><form method="post" action="{base}/psap">'
                '<input name="reason" placeholder="why it is an emergency (required)" size="40"> '
                "<button>send to 911</button></form></fieldset>"
                f'<fieldset><legend>Close</legend><form method="post" action="{base}/close">'
                f'<select name="disposition">{_options([d.value for d in Disposition])}'
                '</select> <input name="note" placeholder="note" size="40"> '
                "<button>close</button></form></fieldset>"
            )
        return (
            f"{_error(request)}{facts}{folded}{calls}"
            f"<h2>What the tipster wrote</h2><p id=text>{html.escape(tip.text)}</p>{images}"
            f"<h2>Thread</h2><div id=thread>{messages or '<p>No messages yet.</p>'}</div>"
            f"{actions}"
        )

    async def _act(self, request: web.Request, analyst: Analyst) -> web.StreamResponse:
        tip_id, action = request.match_info["tip_id"], request.match_info["action"]
        form = await request.post()
        value = {k: str(v) for k, v in form.items()}
        if action == "message":
            tip = await asyncio.to_thread(self.desk.tip_for, analyst, tip_id)
            await asyncio.to_thread(
                self.intake.post,
                tip,
                value.get("text", ""),
                author="ANALYST",
                channel="WEB",
                analyst_id=analyst.id,
            )
        elif action == "move":
            await asyncio.to_thread(
                self.desk.move,
                analyst,
                tip_id,
                value.get("status", ""),
                assigned_to=value.get("assigned_to") or None,
                note=None,
            )
        elif action == "life-safety":
            await asyncio.to_thread(
                self.desk.set_life_safety,
                analyst,
                tip_id,
                value.get("life_safety") == "true",
                value.get("reason", ""),
            )
        elif action == "split":
            await asyncio.to_thread(self.desk.split, analyst, tip_id, value.get("reason"))
        elif action == "psap":
            await asyncio.to_thread(self.desk.to_psap, analyst, tip_id, value.get("reason", ""))
        elif action == "close":
            await asyncio.to_thread(
                self.desk.close,
                analyst,
                tip_id,
                value.get("disposition", ""),
                value.get("note") or None,
            )
        else:
            raise web.HTTPNotFound()
        raise web.HTTPSeeOther(f"/analyst/tips/{tip_id}")

    # -- phone tips ---------------------------------------------------------------------

    async def _phone_form(self, request: web.Request, analyst: Analyst) -> web.Response:
        names = self._school_names()
        schools = "".join(
            f'<option value="{html.escape(sid)}">{html.escape(name)}</option>'
            for sid, name in sorted(names.items(), key=lambda kv: kv[1])
        )
        body = (
            f"{_error(request)}"
            '<form method="post" action="/analyst/phone"><label>School <select name="school_id">'
            f"{schools}</select></label><br><label>Category <select name=category>"
            f"{_options([c.value for c in Category])}</select></label><br>"
            '<label for="text">What the caller says</label><textarea id="text" name="text">'
            "</textarea><button>record the tip</button></form>"
            "<p>The caller stays anonymous: do not type their name or number here.</p>"
        )
        return self._html(_page("Phone tip", body, analyst))

    async def _photo(self, request: web.Request, analyst: Analyst) -> web.Response:
        mime, data = await asyncio.to_thread(
            self.desk.photo, analyst, request.match_info["attachment_id"]
        )
        return web.Response(body=data, content_type=mime, headers=HEADERS)

    async def _phone(self, request: web.Request, analyst: Analyst) -> web.StreamResponse:
        form = await request.post()
        receipt = await asyncio.to_thread(
            functools.partial(
                self.desk.phone_tip,
                self.intake,
                analyst,
                school_id=str(form.get("school_id", "")),
                category=str(form.get("category", "OTHER")),
                text=str(form.get("text", "")),
            )
        )
        body = (
            "<p>Read these to the caller, once: with them they can come back to the thread "
            "on the web page without giving their name.</p>"
            f'<p>Tip code <strong id="tip-code">{html.escape(receipt.code)}</strong>, passcode '
            f'<strong id="passcode">{html.escape(receipt.passcode)}</strong></p>'
            f'<p><a href="/analyst/tips/{receipt.tip_id}">open the tip</a></p>'
        )
        return self._html(_page("Phone tip recorded", body, analyst), 201)
