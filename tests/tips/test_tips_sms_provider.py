"""An SMS tipster and an analyst through the provider simulator (Twilio's wire format both
ways): the simulator posts the signed inbound webhook, the tips service answers with TwiML,
and an analyst's question is texted back from the tip line to the tipster's number."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from safehub.kernel.settings import KafkaSettings
from safehub.kernel.topics import TopicCatalog
from services.tips.web import SMS_PATH
from tests.support.sms import ProviderSimProcess
from tests.support.tips import STATE_ANALYST_TOKEN, TIP_LINE, TWILIO_TOKEN, running_tips
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

TIPSTER = "+15550166001"


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[ProviderSimProcess]:
    (tmp_path / "sim").mkdir()
    with ProviderSimProcess(tmp_path / "sim", auth_token=TWILIO_TOKEN) as process:
        yield process


def test_an_sms_tipster_gets_the_analysts_question_by_text_and_answers_it(
    kafka: KafkaSettings, catalog: TopicCatalog, tmp_path: Path, sim: ProviderSimProcess
) -> None:
    with running_tips(
        kafka, catalog.prefix, tmp_path / "tips", twilio_api_base_url=sim.base_url
    ) as tips:
        sim.configure(inbound_url=tips.base_url + SMS_PATH)
        first = sim.reply(TIPSTER, "a kid in my class brought a knife today", to=TIP_LINE)
        assert first["http_status"] == 200 and "Tip received" in first["response"]
        code = first["response"].split("Code ")[1].split(",")[0]
        analyst = tips.api(STATE_ANALYST_TOKEN)
        tip = next(t for t in analyst.get("/api/tips").json()["tips"] if t["tip_code"] == code)
        assert tip["channel"] == "SMS" and tip["life_safety"]
        asked = analyst.post(
            f"/api/tips/{tip['tip_id']}/messages", json={"text": "Which class is it?"}
        )
        assert asked.status_code == 201
        texted = wait_until(
            lambda: [m for m in sim.messages(to=TIPSTER) if "Which class is it?" in m["body"]],
            what="the question texted to the tipster",
        )
        assert texted[0]["from"] == TIP_LINE and texted[0]["body"].startswith("Safety team:")
        answer = sim.reply(TIPSTER, "third period chemistry", to=TIP_LINE)
        assert "Added to your tip" in answer["response"]
        assert "Which class" not in answer["response"]  # texted already, not repeated
        thread = analyst.get(f"/api/tips/{tip['tip_id']}").json()["thread"]
        assert [(m["author"], m["text"]) for m in thread] == [
            ("ANALYST", "Which class is it?"),
            ("TIPSTER", "third period chemistry"),
        ]
