"""The public pages: the tip form, the receipt, the thread; English and Spanish, no script.

Plain HTML forms that work without JavaScript on a phone (viewport meta, one column, large
targets). Everything a caller wrote is escaped; errors name the field in the page's language
and keep what was typed so far (never the contact: it is not echoed back into a page).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

from services.tips.model import Category
from services.tips.store import MessageRow

TEXT: dict[str, dict[str, str]] = {
    "en": {
        "title": "Report a safety concern",
        "intro": "You can stay anonymous. If someone is in danger right now, call 911.",
        "school": "School",
        "category": "What is it about?",
        "text": "What is happening? Who, where, when?",
        "photo": "Photo (optional)",
        "anonymous": "Keep me anonymous",
        "contact": "Your contact (optional, only if you want to be reached)",
        "name": "Name",
        "phone": "Phone",
        "email": "E-mail",
        "send": "Send the tip",
        "received": "Your tip was received",
        "code": "Tip code",
        "passcode": "Passcode",
        "keep": "Write these down. With them you can read answers and add information "
        "without telling us who you are. We cannot show them again.",
        "urgent": "This sounds urgent: it has been sent to the people on duty now.",
        "thread": "Check your tip",
        "open": "Open",
        "reply": "Add information or answer",
        "add": "Send",
        "you": "You",
        "analyst": "Safety team",
        "status": "Status",
        "error": "Please correct this",
        "language": "Español",
        "other_language": "es",
        "WEAPON": "A weapon",
        "THREAT_OF_VIOLENCE": "A threat of violence",
        "SELF_HARM": "Someone may hurt themselves",
        "BULLYING": "Bullying",
        "DRUGS": "Drugs or alcohol",
        "ABUSE": "Abuse",
        "OTHER": "Something else",
    },
    "es": {
        "title": "Reportar un problema de seguridad",
        "intro": "Puede permanecer anónimo. Si alguien está en peligro ahora, llame al 911.",
        "school": "Escuela",
        "category": "¿De qué se trata?",
        "text": "¿Qué está pasando? ¿Quién, dónde, cuándo?",
        "photo": "Foto (opcional)",
        "anonymous": "Quiero permanecer anónimo",
        "contact": "Su contacto (opcional, solo si quiere que lo contacten)",
        "name": "Nombre",
        "phone": "Teléfono",
        "email": "Correo electrónico",
        "send": "Enviar el reporte",
        "received": "Recibimos su reporte",
        "code": "Código del reporte",
        "passcode": "Clave",
        "keep": "Anótelos. Con ellos puede leer respuestas y agregar información sin "
        "decirnos quién es. No podemos mostrarlos de nuevo.",
        "urgent": "Esto parece urgente: se envió a las personas de turno ahora.",
        "thread": "Consultar su reporte",
        "open": "Abrir",
        "reply": "Agregar información o responder",
        "add": "Enviar",
        "you": "Usted",
        "analyst": "Equipo de seguridad",
        "status": "Estado",
        "error": "Por favor corrija esto",
        "language": "English",
        "other_language": "en",
        "WEAPON": "Un arma",
        "THREAT_OF_VIOLENCE": "Una amenaza de violencia",
        "SELF_HARM": "Alguien podría hacerse daño",
        "BULLYING": "Acoso escolar",
        "DRUGS": "Drogas o alcohol",
        "ABUSE": "Abuso",
        "OTHER": "Otra cosa",
    },
}

#: What a tipster reads for each status (never the internal symbol).
STATUS: dict[str, dict[str, str]] = {
    "en": {
        "NEW": "Received",
        "TRIAGED": "Being reviewed",
        "ESCALATED": "Sent to the people on duty",
        "ASSIGNED": "Someone is working on it",
        "FOLLOW_UP": "Being followed up",
        "MERGED": "Joined with a report about the same thing",
        "CLOSED_RESOLVED": "Closed",
        "CLOSED_UNFOUNDED": "Closed",
    },
    "es": {
        "NEW": "Recibido",
        "TRIAGED": "En revisión",
        "ESCALATED": "Enviado a las personas de turno",
        "ASSIGNED": "Alguien lo está atendiendo",
        "FOLLOW_UP": "En seguimiento",
        "MERGED": "Unido a un reporte sobre lo mismo",
        "CLOSED_RESOLVED": "Cerrado",
        "CLOSED_UNFOUNDED": "Cerrado",
    },
}

_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:0 auto;max-width:40rem;padding:1rem;"
    "line-height:1.5}label{display:block;margin-top:1rem;font-weight:600}"
    "input[type=text],input[type=tel],input[type=email],select,textarea{width:100%;"
    "box-sizing:border-box;font-size:1rem;padding:.6rem}textarea{min-height:8rem}"
    "button{margin-top:1.2rem;font-size:1.1rem;padding:.8rem 1.4rem;width:100%}"
    ".error{border:2px solid #b00020;padding:.6rem;color:#b00020}"
    ".code{font-size:1.6rem;font-family:monospace;letter-spacing:.1rem;white-space:nowrap}"
    ".msg{border-left:4px solid #888;padding:.4rem .8rem;margin:.6rem 0}"
    ".msg.analyst{border-color:#0b5}.check{display:flex;gap:.5rem;align-items:center}"
)


def language_of(value: str | None, accept: str | None) -> str:
    """``en`` or ``es``: the explicit choice, else the browser's first preference."""
    if value in TEXT:
        return str(value)
    for part in (accept or "").split(","):
        tag = part.split(";")[0].strip().lower()[:2]
        if tag in TEXT:
            return tag
    return "en"


def _page(lang: str, title: str, body: str) -> str:
    return (
        f'<!doctype html><html lang="{lang}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{body}</body></html>"
    )


def _error(lang: str, error: tuple[str, str] | None) -> str:
    if error is None:
        return ""
    field, reason = error
    label = TEXT[lang].get(field, field)
    return (
        f'<p class="error" role="alert" id="error">{html.escape(TEXT[lang]["error"])}: '
        f"<strong>{html.escape(label)}</strong> ({html.escape(field)}: "
        f"{html.escape(reason)})</p>"
    )


def form(
    lang: str,
    schools: Sequence[tuple[str, str]],
    nonce: str,
    *,
    error: tuple[str, str] | None = None,
    kept: Mapping[str, str] | None = None,
) -> str:
    """The tip form (``kept``: the school, category and text typed before an error)."""
    t = TEXT[lang]
    kept = kept or {}
    options = "".join(
        f'<option value="{html.escape(sid)}"{" selected" if kept.get("school_id") == sid else ""}>'
        f"{html.escape(name)}</option>"
        for sid, name in schools
    )
    categories = "".join(
        f'<option value="{c.value}"{" selected" if kept.get("category") == c.value else ""}>'
        f"{html.escape(t[c.value])}</option>"
        for c in Category
    )
    body = (
        f'<p><a href="/?lang={t["other_language"]}">{t["language"]}</a> · '
        f'<a href="/thread?lang={lang}">{html.escape(t["thread"])}</a></p>'
        f"<h1>{html.escape(t['title'])}</h1><p>{html.escape(t['intro'])}</p>"
        f"{_error(lang, error)}"
        '<form method="post" action="/tip" enctype="multipart/form-data">'
        f'<input type="hidden" name="nonce" value="{html.escape(nonce)}">'
        f'<input type="hidden" name="lang" value="{lang}">'
        f'<label for="school_id">{html.escape(t["school"])}</label>'
        f'<select id="school_id" name="school_id" required>{options}</select>'
        f'<label for="category">{html.escape(t["category"])}</label>'
        f'<select id="category" name="category">{categories}</select>'
        f'<label for="text">{html.escape(t["text"])}</label>'
        f'<textarea id="text" name="text" required maxlength="5000">'
        f"{html.escape(kept.get('text', ''))}</textarea>"
        f'<label for="photo">{html.escape(t["photo"])}</label>'
        '<input id="photo" name="photo" type="file" accept="image/jpeg,image/png,image/webp">'
        f'<p class="check"><input id="anonymous" name="anonymous" type="checkbox" checked>'
        f'<label for="anonymous" style="margin:0">{html.escape(t["anonymous"])}</label></p>'
        f"<fieldset><legend>{html.escape(t['contact'])}</legend>"
        f'<label for="name">{html.escape(t["name"])}</label>'
        '<input id="name" name="name" type="text" autocomplete="off">'
        f'<label for="phone">{html.escape(t["phone"])}</label>'
        '<input id="phone" name="phone" type="tel" autocomplete="off">'
        f'<label for="email">{html.escape(t["email"])}</label>'
        '<input id="email" name="email" type="email" autocomplete="off"></fieldset>'
        f'<button type="submit">{html.escape(t["send"])}</button></form>'
    )
    return _page(lang, t["title"], body)


def receipt(lang: str, code: str, passcode: str, *, life_safety: bool) -> str:
    """The page that gives the tipster their code and passcode, once."""
    t = TEXT[lang]
    urgent = f"<p><strong>{html.escape(t['urgent'])}</strong></p>" if life_safety else ""
    body = (
        f"<h1>{html.escape(t['received'])}</h1>{urgent}"
        f'<p>{html.escape(t["code"])}: <span class="code" id="tip-code">'
        f"{html.escape(code)}</span></p>"
        f'<p>{html.escape(t["passcode"])}: <span class="code" id="passcode">'
        f"{html.escape(passcode)}</span></p><p>{html.escape(t['keep'])}</p>"
        f'<p><a href="/thread?lang={lang}">{html.escape(t["thread"])}</a></p>'
    )
    return _page(lang, t["received"], body)


def thread_login(lang: str, *, error: tuple[str, str] | None = None) -> str:
    """The code + passcode form."""
    t = TEXT[lang]
    body = (
        f"<h1>{html.escape(t['thread'])}</h1>{_error(lang, error)}"
        '<form method="post" action="/thread">'
        f'<input type="hidden" name="lang" value="{lang}">'
        f'<label for="code">{html.escape(t["code"])}</label>'
        '<input id="code" name="code" type="text" autocomplete="off" required>'
        f'<label for="passcode">{html.escape(t["passcode"])}</label>'
        '<input id="passcode" name="passcode" type="text" autocomplete="off" required>'
        f'<button type="submit">{html.escape(t["open"])}</button></form>'
    )
    return _page(lang, t["thread"], body)


def thread(
    lang: str,
    code: str,
    passcode: str,
    status: str,
    messages: Sequence[MessageRow],
    *,
    error: tuple[str, str] | None = None,
) -> str:
    """The thread: every message, oldest first, and the reply form (code and passcode ride
    along in hidden fields: there is no session to steal)."""
    t = TEXT[lang]
    items = "".join(
        f'<div class="msg {"analyst" if m.author == "ANALYST" else "tipster"}">'
        f"<strong>{html.escape(t['analyst'] if m.author == 'ANALYST' else t['you'])}</strong>"
        f"<p>{html.escape(m.text)}</p></div>"
        for m in messages
    )
    body = (
        f"<h1>{html.escape(t['thread'])}</h1>"
        f'<p>{html.escape(t["code"])}: <span class="code">{html.escape(code)}</span> · '
        f'{html.escape(t["status"])}: <span id="status">'
        f"{html.escape(STATUS[lang].get(status, status))}</span></p>"
        f'<div id="messages">{items}</div>{_error(lang, error)}'
        '<form method="post" action="/thread">'
        f'<input type="hidden" name="lang" value="{lang}">'
        f'<input type="hidden" name="code" value="{html.escape(code)}">'
        f'<input type="hidden" name="passcode" value="{html.escape(passcode)}">'
        f'<label for="text">{html.escape(t["reply"])}</label>'
        '<textarea id="text" name="text" maxlength="5000"></textarea>'
        f'<button type="submit">{html.escape(t["add"])}</button></form>'
    )
    return _page(lang, t["thread"], body)
