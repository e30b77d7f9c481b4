"""Each deployable's manifest: found, complete, and refused with a clear error when wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from safehub.devstack.hub import DEFAULT_COMPONENTS, MANIFESTS, Hub
from safehub.devstack.manifest import HOMES, ROOT, Kind, Manifest, Priority, discover
from safehub.kernel.errors import ConfigError, SafeHubError
from safehub.kernel.settings import HubSettings


def test_every_deployable_folder_has_a_manifest_and_every_manifest_a_folder() -> None:
    packages = {
        f"{home}.{main.parent.name}"
        for home in HOMES
        for main in (ROOT / home).glob("*/__main__.py")
    }
    ours = {module for module in MANIFESTS if module.split(".")[0] in HOMES}
    assert packages == ours


def test_the_default_hub_runs_consumers_before_the_gateway_and_no_simulator() -> None:
    order = list(DEFAULT_COMPONENTS)
    assert order.index("services.incidents") < order.index("services.gateway")
    assert order.index("connectors.psap_cad") < order.index("services.gateway")
    assert all(MANIFESTS[m].kind is not Kind.SIMULATOR for m in order)
    # The emergency path is never niced; bulk feeds are.
    for module in ("services.gateway", "services.incidents", "connectors.psap_cad"):
        assert MANIFESTS[module].priority is Priority.LIFE_SAFETY
        assert MANIFESTS[module].niceness == 0
    assert MANIFESTS["services.doorstate"].niceness > 0


def _write(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True)
    path = folder / "manifest.toml"
    path.write_text(text)
    return path


def test_a_manifest_missing_a_field_names_it(tmp_path: Path) -> None:
    path = _write(tmp_path / "services" / "tips", 'module = "services.tips"\nkind = "service"\n')
    with pytest.raises(ConfigError, match="start_order") as info:
        Manifest.load(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('module = "services.tips"\nkind = "daemon"\nstart_order = 1\n', "daemon"),
        ('module = "services.tips"\nkind = "service"\nstart_order = 1\nport = 1\n', "port"),
        ('module = "services.other"\nkind = "service"\nstart_order = 1\n', "services.tips"),
        ("module = \n", "TOML"),
    ],
)
def test_a_wrong_manifest_is_refused_naming_what_is_wrong(
    tmp_path: Path, text: str, named: str
) -> None:
    path = _write(tmp_path / "services" / "tips", text)
    with pytest.raises(ConfigError, match=named):
        Manifest.load(path)


def test_a_new_deployable_is_found_by_its_folder_and_manifest_alone(tmp_path: Path) -> None:
    _write(
        tmp_path / "services" / "tips",
        'module = "services.tips"\nkind = "service"\nstart_order = 15\n'
        '[env]\nSAFEHUB_TIPS__HTTP_PORT = "{port.tips_http}"\n',
    )
    found = discover(tmp_path)
    assert list(found) == ["services.tips"]
    assert found["services.tips"].env == {"SAFEHUB_TIPS__HTTP_PORT": "{port.tips_http}"}


def test_the_hub_fills_a_manifest_with_its_ports_secrets_and_certificates(
    tmp_path: Path,
) -> None:
    hub = Hub(HubSettings(), run_dir=tmp_path)
    env = hub.component_env("connectors.psap_cad")
    assert env["SAFEHUB_PSAP_CAD__LISTEN_PORT"] == str(hub.ports.cad_callback)
    assert env["SAFEHUB_PSAP_CAD__INBOUND_TOKEN"] == hub.cad_token
    assert Path(env["SAFEHUB_PSAP_CAD__CA_BUNDLE"]).is_file()
    vendor = hub.component_env("vendors.pa_signage_sim")
    assert vendor["SAFEHUB_PA_SIGNAGE_SIM__GATEWAY_ADDRESS"] == hub.gateway_address
    assert "pa-signage-north" in Path(vendor["SAFEHUB_PA_SIGNAGE_SIM__TLS_CERT_FILE"]).name
    bad = Manifest(module="services.x", kind=Kind.SERVICE, start_order=1, path=tmp_path / "m")
    with pytest.raises(SafeHubError, match=r"port\.nope|nope"):
        hub._fill(bad, "{nope.port}")
