"""The public tip pages in a real browser at phone width, with JavaScript off (Debian's
headless Chromium driven by Playwright): a tip sent in Spanish with a photo, the code and
passcode read off the receipt, then the thread opened with them and an answer sent."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from playwright.sync_api import Browser, expect, sync_playwright

from safehub.gen.safehub.tips.v1 import tips_pb2
from safehub.kernel.settings import KafkaSettings
from safehub.kernel.topics import TopicCatalog
from tests.support.processes import ROOT
from tests.support.tips import STATE_ANALYST_TOKEN, TipsHandle, running_tips

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
PHONE = {"width": 375, "height": 740}
ARTIFACTS = ROOT / "tests" / "artifacts"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def tips(kafka: KafkaSettings, catalog: TopicCatalog, tmp_path: Path) -> Iterator[TipsHandle]:
    with running_tips(kafka, catalog.prefix, tmp_path) as handle:
        yield handle


def test_a_phone_sends_a_tip_and_follows_its_thread_without_javascript(
    browser: Browser, tips: TipsHandle, tmp_path: Path
) -> None:
    photo = tmp_path / "nota.png"
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 120, 200)).save(buffer, "PNG")
    photo.write_bytes(buffer.getvalue())
    context = browser.new_context(
        viewport=PHONE, is_mobile=True, java_script_enabled=False, locale="es-US"
    )
    page = context.new_page()
    page.goto(tips.base_url + "/")  # Accept-Language es: the form in Spanish
    expect(page.locator("h1")).to_have_text("Reportar un problema de seguridad")
    # One column at phone width: the text box fits the screen, the button fits a thumb.
    box = page.locator("textarea#text").bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
    button = page.locator("button[type=submit]").bounding_box()
    assert button is not None and button["height"] >= 40  # a thumb-sized target
    page.select_option("#school_id", "sch-lincoln-hs")
    page.select_option("#category", "BULLYING")
    page.fill("#text", "Un grupo molesta a un niño de sexto grado en el autobús")
    page.set_input_files("#photo", str(photo))
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_have_text("Recibimos su reporte")
    code = page.locator("#tip-code").inner_text()
    passcode = page.locator("#passcode").inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "tips-receipt-phone.png"), full_page=True)
    # The analyst sees the tip with its cleaned photo and writes back.
    analyst = tips.api(STATE_ANALYST_TOKEN)
    tip = next(t for t in analyst.get("/api/tips").json()["tips"] if t["tip_code"] == code)
    detail = analyst.get(f"/api/tips/{tip['tip_id']}").json()
    assert detail["channel"] == "WEB" and len(detail["attachments"]) == 1
    question = "¿En qué autobús pasa esto?"
    assert (
        analyst.post(f"/api/tips/{tip['tip_id']}/messages", json={"text": question}).status_code
        == 201
    )
    # The tipster opens the thread with code and passcode and answers.
    page.goto(tips.base_url + "/thread")
    page.fill("#code", code)
    page.fill("#passcode", passcode)
    page.click("button[type=submit]")
    expect(page.locator("#messages")).to_contain_text(question)
    page.fill("#text", "El autobús 12, por la tarde")
    page.click("button[type=submit]")
    expect(page.locator("#messages")).to_contain_text("El autobús 12, por la tarde")
    page.screenshot(path=str(ARTIFACTS / "tips-thread-phone.png"), full_page=True)
    thread = analyst.get(f"/api/tips/{tip['tip_id']}").json()["thread"]
    assert [m["author"] for m in thread] == ["ANALYST", "TIPSTER"]
    # A wrong passcode in the browser: the same refusal as an unknown code.
    page.goto(tips.base_url + "/thread")
    page.fill("#code", code)
    page.fill("#passcode", "wrong-passcode")
    page.click("button[type=submit]")
    expect(page.locator("#error")).to_be_visible()
    context.close()


def test_an_analyst_works_the_queue_in_the_console(browser: Browser, tips: TipsHandle) -> None:
    stub = tips.stub_for("tips-app-north")
    routine = stub.SubmitTip(
        tips_pb2.SubmitTipRequest(
            client_tip_id="c-1",
            school_id="sch-lincoln-hs",
            category=tips_pb2.TIP_CATEGORY_DRUGS,
            text="vapes sold behind the library at lunch",
        ),
        timeout=20,
    )
    urgent = stub.SubmitTip(
        tips_pb2.SubmitTipRequest(
            client_tip_id="c-2",
            school_id="sch-lincoln-hs",
            category=tips_pb2.TIP_CATEGORY_WEAPON,
            text="he has a knife in his locker",
        ),
        timeout=20,
    )
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(tips.base_url + "/analyst")
    page.fill("#token", "not-a-token")
    page.click("button[type=submit]")
    expect(page.locator("#error")).to_contain_text("unknown token")
    page.fill("#token", STATE_ANALYST_TOKEN)
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_have_text("Tip queue")
    codes = page.locator("#queue tbody tr td:first-child").all_inner_texts()
    assert codes.index(urgent.tip_code) < codes.index(routine.tip_code)  # life-safety first
    page.click(f"text={urgent.tip_code}")
    expect(page.locator("#text")).to_have_text("he has a knife in his locker")
    expect(page.locator("#escalation")).to_contain_text("administrator on duty")
    page.fill("#reply", "Which locker number?")
    page.click("fieldset:has-text('Answer in the thread') button")
    expect(page.locator("#thread")).to_contain_text("Which locker number?")
    page.fill("input[name=reason]", "")
    page.click("fieldset:has-text('Life-safety flag') button")
    expect(page.locator("#error")).to_contain_text("note")  # a reason is required
    page.select_option("select[name=disposition]", "REFERRED_TO_LAW_ENFORCEMENT")
    page.click("fieldset:has-text('Close') button")
    expect(page.locator("#status")).to_have_text("CLOSED_RESOLVED")
    page.screenshot(path=str(ARTIFACTS / "tips-console-tip.png"), full_page=True)
    # The caller-taker's form: the code and passcode to read to the caller.
    page.goto(tips.base_url + "/analyst/phone")
    page.fill("#text", "caller says a student threatened a teacher after class")
    page.click("text=record the tip")
    expect(page.locator("#tip-code")).to_be_visible()
    context.close()
    # A form posted from another site is refused, whatever cookie it carries.
    with httpx.Client(base_url=tips.base_url) as other:
        other.cookies.set("tips_analyst", STATE_ANALYST_TOKEN, path="/analyst")
        forged = other.post(
            "/analyst/phone",
            data={"school_id": "sch-lincoln-hs", "category": "OTHER", "text": "forged tip"},
            headers={"Origin": "https://evil.example"},
        )
    assert forged.status_code == 403
