"""Fixtures of the gateway's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from safehub.kernel.codec import Codec
from safehub.kernel.settings import KafkaSettings
from safehub.kernel.topics import TopicCatalog
from tests.support.gateway import GatewayHandle, running_gateway


@pytest.fixture(scope="module")
def shared_gw(
    module_kafka: KafkaSettings,
    module_catalog: TopicCatalog,
    codec: Codec,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayHandle]:
    """One gateway for the tests that only look at answers (starting one costs ~3 s)."""
    with running_gateway(
        module_kafka, module_catalog.prefix, tmp_path_factory.mktemp("shared-gateway"), codec=codec
    ) as handle:
        yield handle
