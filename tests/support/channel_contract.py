"""What every notification channel adapter must do: a suite each adapter's tests inherit.

A new channel (a second SMS provider, a radio gateway, a district's own app) gets these tests
by subclassing :class:`ChannelContract` and providing four things against its real stand-in:
``adapter`` and ``unreachable`` fixtures, ``new_address()`` and ``received(address)``, plus a
``refused_address`` the stand-in turns away. The contract is the one in
``services/notify/channels/base.py``: a blocking, thread-safe ``send``; a definitive refusal is
``accepted=False`` with a reason; only a transient failure raises ``ChannelError``; and an
address (contact details, PII) never appears in a result or an error.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor

import pytest

from services.notify.channels.base import ChannelAdapter, ChannelError, OutboundMessage
from tests.support.waiting import wait_until


def outbound(address: str, text: str = "", *, exercise: bool = False) -> OutboundMessage:
    """One message to ``address`` with a unique marker in its text."""
    marker = uuid.uuid4().hex[:10]
    prefix = "DRILL - " if exercise else ""
    return OutboundMessage(
        delivery_id=f"dlv-{marker}",
        notification_id="ntf-contract",
        recipient_id="stf-lincoln-001",
        address=address,
        subject=f"{prefix}LOCKDOWN - Lincoln High School",
        text=text or f"{prefix}Lockdown in effect [{marker}]. Reply 1 to acknowledge.",
        language="en-US",
        ack_url=None,
        exercise=exercise,
    )


class ChannelContract(ABC):
    """Inherit, set ``refused_address``, implement the two methods, and define two fixtures.

    ``adapter``: the adapter, configured against its running stand-in; ``unreachable``: the
    same adapter pointed at an address where nothing listens. (pytest collects the tests of
    each subclass; a subclass without the fixtures fails naming the missing one.)
    """

    refused_address: str

    @abstractmethod
    def new_address(self) -> str:
        """An address no other test has used (tests share the stand-in)."""

    @abstractmethod
    def received(self, address: str) -> list[str]:
        """The texts the stand-in has taken for ``address``, oldest first."""

    def test_an_accepted_message_reaches_its_recipient_once(self, adapter: ChannelAdapter) -> None:
        address = self.new_address()
        message = outbound(address)
        result = adapter.send(message)
        assert result.accepted and result.error is None
        assert result.provider_message_id
        texts = wait_until(lambda: self.received(address), what="the message at the stand-in")
        assert len(texts) == 1 and message.text.split("[")[1][:10] in texts[0]

    def test_a_refused_address_is_not_accepted_and_the_reason_never_names_it(
        self, adapter: ChannelAdapter
    ) -> None:
        result = adapter.send(outbound(self.refused_address))
        assert not result.accepted and result.error
        assert self.refused_address not in result.error
        assert self.received(self.refused_address) == []

    def test_an_unreachable_provider_is_a_transient_error_that_never_names_the_address(
        self, unreachable: ChannelAdapter
    ) -> None:
        address = self.new_address()
        with pytest.raises(ChannelError) as info:
            unreachable.send(outbound(address))
        assert address not in str(info.value)

    def test_one_adapter_serves_concurrent_senders(self, adapter: ChannelAdapter) -> None:
        addresses = [self.new_address() for _ in range(6)]
        with ThreadPoolExecutor(max_workers=6) as pool:
            results = list(pool.map(lambda a: adapter.send(outbound(a)), addresses))
        assert all(r.accepted for r in results)
        assert len({r.provider_message_id for r in results}) == len(addresses)
        wait_until(
            lambda: all(len(self.received(a)) == 1 for a in addresses),
            what="one message per concurrent sender",
        )

    def test_a_drill_says_so_to_its_recipient(self, adapter: ChannelAdapter) -> None:
        address = self.new_address()
        assert adapter.send(outbound(address, exercise=True)).accepted
        texts = wait_until(lambda: self.received(address), what="the drill at the stand-in")
        assert "DRILL" in texts[0]
