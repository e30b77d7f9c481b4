"""The Helm chart (deploy/helm/safehub) and the Dockerfile stay true to the code they deploy.

Two layers. Without helm: Chart.yaml and values.yaml parse, every ``.Values`` path a template
reads exists (and every value is read), every module the chart runs is a deployable, every
``SAFEHUB_*`` variable is a real settings field, the topics Job runs a real CLI command.
With Helm's own Go engine (``helm-python-sdk`` bundles it as a library, no binary): ``helm
lint``, ``helm template`` for the required values and for every optional branch, each
manifest validated against the Kubernetes schemas (strict: unknown fields fail), and each
deployable's rendered environment loaded by its own settings class.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from safehub.devstack.manifest import Kind, discover
from safehub.kernel.directory import Directory
from safehub.kernel.settings import HubSettings, load_settings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "safehub"
TEMPLATES = CHART / "templates"
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
KUBE_VERSION = "1.30.0"

#: Deployables the chart runs in production, and the simulators it may run on test clusters.
PRODUCTION = {
    "services.directory",
    "services.gateway",
    "services.incidents",
    "services.doorstate",
    "services.notify",
    "services.timeline",
    "services.tips",
    "connectors.psap_cad",
    "connectors.sis_roster",
}
#: Vendor programs the chart runs as demo stand-ins (a real vendor runs its own).
VENDORS = {"vendors.access_control_sim", "vendors.pa_signage_sim"}
#: Deployables that must run as exactly one pod, never two at once (see their templates).
SINGLE_WRITERS = {"services.notify", "services.timeline", "services.incidents"}
#: Deployables run as one pod by choice (what scaling out would need: see their templates).
ONE_POD = {"services.tips"}

#: SAFEHUB_* variables that are not settings fields: read by the kernel itself.
RUNTIME_VARIABLES = {
    "SAFEHUB_READY_FILE": ["safehub/kernel/runtime.py", "safehub/kernel/streams.py"],
    # One directory file for every deployable at once (each section's default).
    "SAFEHUB_DIRECTORY_FILE": ["safehub/kernel/directory.py"],
}

VALUES_PATH = re.compile(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")
#: ``{{- $notify := .Values.services.notify }}``: a variable naming a values subtree.
VALUES_ALIAS = re.compile(r"\{\{-?\s*\$(\w+)\s*:=\s*\.Values((?:\.\w+)+)\s*-?\}\}")
MODULE = re.compile(r'"python",\s*"-m",\s*"([A-Za-z0-9_.]+)"')
SAFEHUB_VARIABLE = re.compile(r"\bSAFEHUB_[A-Z0-9_]+\b")


def _template_texts() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(TEMPLATES.iterdir()) if p.is_file()}


def _values_paths(text: str) -> list[tuple[str, ...]]:
    """The ``.Values`` paths a template reads, through ``$alias.x`` too (not the alias itself)."""
    aliases = {m[1]: m[2] for m in VALUES_ALIAS.finditer(text)}
    text = VALUES_ALIAS.sub("", text)
    for alias, path in aliases.items():
        text = re.sub(rf"\${alias}\b(?!\s*:=)", ".Values" + path, text)
    return [tuple(m.strip(".").split(".")) for m in VALUES_PATH.findall(text)]


def _leaf_paths(node: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    if isinstance(node, dict) and node:
        for key, child in node.items():
            yield from _leaf_paths(child, (*prefix, str(key)))
    else:
        yield prefix


def _resolve(values: dict[str, Any], path: tuple[str, ...]) -> bool:
    node: Any = values
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _settings_class(module: str) -> type[HubSettings]:
    """The one HubSettings subclass a deployable's settings.py declares."""
    settings_module = importlib.import_module(f"{module}.settings")
    classes = [
        cls
        for _, cls in inspect.getmembers(settings_module, inspect.isclass)
        if issubclass(cls, HubSettings) and cls.__module__ == settings_module.__name__
    ]
    assert len(classes) == 1, f"{module}.settings declares {classes}, expected one settings class"
    return classes[0]


def _is_field(cls: type[BaseModel], variable: str) -> bool:
    """Whether SAFEHUB_<SECTION>__<FIELD> names a (nested) field of ``cls``."""
    model: type[BaseModel] = cls
    parts = variable.removeprefix("SAFEHUB_").lower().split("__")
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        if i < len(parts) - 1:
            annotation = field.annotation
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                return False
            model = annotation
    return True


def _all_settings_classes() -> list[type[HubSettings]]:
    return [HubSettings, *(_settings_class(m) for m in sorted(PRODUCTION | VENDORS))]


# --- without helm -----------------------------------------------------------------------------


def test_chart_metadata_matches_the_project() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "safehub"
    assert str(chart["appVersion"]) == project["version"] == "0.1.0"


def test_every_values_path_a_template_reads_exists() -> None:
    missing = [
        f"{name}: .Values.{'.'.join(path)}"
        for name, text in _template_texts().items()
        for path in _values_paths(text)
        if not _resolve(VALUES, path)
    ]
    assert not missing, f"templates read values that values.yaml does not declare: {missing}"


def test_every_value_is_read_by_a_template() -> None:
    read = {path for text in _template_texts().values() for path in _values_paths(text)}
    unused = [
        ".".join(leaf)
        for leaf in _leaf_paths(VALUES)
        if not any(leaf[:n] in read for n in range(1, len(leaf) + 1))
    ]
    assert not unused, f"values.yaml declares values no template reads: {unused}"


def _declared(leaf: tuple[str, ...]) -> bool:
    """Whether values.yaml declares ``leaf`` (below a list, scalar or ``{}`` is the user's)."""
    node: Any = VALUES
    for part in leaf:
        if not isinstance(node, dict) or not node:
            return True
        if part not in node:
            return False
        node = node[part]
    return True


@pytest.mark.parametrize("path", CI_VALUES, ids=lambda p: p.name)
def test_example_values_only_set_declared_values(path: Path) -> None:
    overrides = yaml.safe_load(path.read_text())
    undeclared = [".".join(leaf) for leaf in _leaf_paths(overrides) if not _declared(leaf)]
    assert not undeclared, (
        f"{path.name} sets values that values.yaml does not declare: {undeclared}"
    )


def test_the_chart_runs_every_deployable_and_only_deployables() -> None:
    modules = {m for t in _template_texts().values() for m in MODULE.findall(t)}
    for module in modules:
        package = ROOT / Path(*module.split("."))
        assert (package / "__main__.py").is_file(), f"{module} is not a deployable package"
    # Every deployable with a manifest (third-party simulators excepted: they stand in for
    # systems a real deployment has).
    on_disk = {module for module, m in discover().items() if m.kind is not Kind.SIMULATOR}
    assert modules == on_disk == PRODUCTION | VENDORS, (
        "a deployable was added or removed: add it to deploy/helm (ARCHITECTURE.md §7)"
    )


def _variables_in(*paths: Path) -> set[str]:
    return {v for path in paths for v in SAFEHUB_VARIABLE.findall(path.read_text())}


def test_every_safehub_variable_is_a_settings_field() -> None:
    variables = _variables_in(
        *TEMPLATES.iterdir(), CHART / "values.yaml", *CI_VALUES, ROOT / "Dockerfile"
    )
    assert "SAFEHUB_GATEWAY__PORT" in variables
    classes = _all_settings_classes()
    unknown = sorted(
        v
        for v in variables
        if v not in RUNTIME_VARIABLES and not any(_is_field(cls, v) for cls in classes)
    )
    assert not unknown, f"no settings field reads {unknown} (code and chart drifted)"
    for variable, readers in RUNTIME_VARIABLES.items():
        for reader in readers:
            assert f'"{variable}"' in (ROOT / reader).read_text(), f"{reader} reads {variable}"


def test_the_topics_job_runs_a_real_cli_command() -> None:
    job = (TEMPLATES / "job-topics.yaml").read_text()
    assert 'command: ["safehub", "topics", "create"]' in job
    assert "pre-install,pre-upgrade" in job
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["safehub"] == "safehub.cli.main:main"
    import typer.main

    from safehub.cli.main import app

    cli = typer.main.get_command(app)
    topics = cli.commands["topics"]
    assert "create" in topics.commands


def test_the_default_directory_is_the_demo_directory() -> None:
    copy = CHART / "files" / "directory.json"
    assert copy.read_bytes() == (ROOT / "deploy/directory/demo.json").read_bytes(), (
        "deploy/helm/safehub/files/directory.json must be a copy of deploy/directory/demo.json"
    )
    Directory.load(copy)


def _dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def test_dockerfile_builds_a_non_root_image_of_the_project() -> None:
    text = _dockerfile()
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text
    assert "-c constraints.txt ." in text
    for source in ("schemas/", "safehub/", "services/", "connectors/", "deploy/directory/"):
        assert re.search(rf"^COPY {re.escape(source)} ", text, re.M), f"Dockerfile copies {source}"
    users = re.findall(r"^USER (\d+):(\d+)$", text, re.M)
    assert users, "the image runs as a numeric non-root user"
    uid, gid = map(int, users[-1])
    assert uid != 0
    assert (uid, gid) == (
        VALUES["podSecurityContext"]["runAsUser"],
        VALUES["podSecurityContext"]["runAsGroup"],
    )
    # The CAP schema and the EIDO facts ship inside the package: no files from outside the
    # repository, and no setting pointing at one.
    assert "--from=shared" not in text and "build-context" not in text
    assert "SAFEHUB_NOTIFY__CAP_XSD" not in text and "SAFEHUB_PSAP_CAD__EIDO_RULES_FILE" not in text
    assert VALUES["services"]["notify"]["capXsdFile"] == ""
    assert VALUES["connectors"]["psapCad"]["eidoRulesFile"] == ""


def test_dockerignore_keeps_the_context_to_what_is_copied() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "exclude everything, then re-include what the Dockerfile copies"
    included = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = set()
    for match in re.finditer(r"^COPY (?!--from)(.+) \S+$", _dockerfile(), re.M):
        copied.update(s.rstrip("/") for s in match[1].split())
    assert copied <= included, f"the build context lacks {copied - included}"
    assert not included & {".git", ".venv", "tests", "bench"}
    for path in included:
        assert (ROOT / path).exists(), path


# --- with Helm's engine ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def helm() -> Any:
    return pytest.importorskip("helm_python", reason="helm-python-sdk (dev extra) bundles Helm")


def _render(helm: Any, values: dict[str, Any]) -> list[dict[str, Any]]:
    with helm.Chart.load(str(CHART)) as chart:
        out = chart.render(values, name="hub", namespace="safety", is_install=True)
    docs = []
    for name, text in out.items():
        if name.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


@pytest.fixture(scope="module", params=CI_VALUES, ids=lambda p: p.name)
def rendered(
    request: pytest.FixtureRequest, helm: Any
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    values = yaml.safe_load(request.param.read_text())
    return values, _render(helm, values)


def _deployments(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        d["spec"]["template"]["spec"]["containers"][0]["command"][2]: d
        for d in docs
        if d["kind"] == "Deployment"
    }


def _ports(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    return list(deployment["spec"]["template"]["spec"]["containers"][0].get("ports", []))


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    names = [e["name"] for e in container["env"]]
    assert len(names) == len(set(names)), f"duplicate variables in {container['name']}"
    return {e["name"]: e for e in container["env"]}


def test_helm_lint(helm: Any) -> None:
    for path in [None, *CI_VALUES]:
        values = yaml.safe_load(path.read_text()) if path else None
        report = helm.lint(str(CHART), values, strict=True)
        problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
        assert not problems, f"helm lint --strict {'-f ' + path.name if path else ''}: {problems}"


def _required_values() -> dict[str, Any]:
    return dict(yaml.safe_load((CHART / "ci" / "required-values.yaml").read_text()))


def _with(values: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``values`` with ``path`` (dotted) set to ``value``."""
    copy: dict[str, Any] = yaml.safe_load(yaml.safe_dump(values))
    *parents, leaf = path.split(".")
    node = copy
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return copy


def test_kafka_cad_and_notify_endpoints_must_be_named(helm: Any) -> None:
    with pytest.raises(helm.HelmRenderError, match=r"kafka\.bootstrapServers is required"):
        _render(helm, {})
    required = _required_values()
    for path, message in (
        ("connectors.psapCad.cadUrl", r"connectors\.psapCad\.cadUrl is required"),
        ("services.notify.publicUrl", r"services\.notify\.publicUrl is required"),
        ("services.notify.smtp.host", r"services\.notify\.smtp\.host is required"),
        ("services.tips.publicUrl", r"services\.tips\.publicUrl is required"),
        ("services.tips.secret", r"services\.tips\.secret is required"),
    ):
        with pytest.raises(helm.HelmRenderError, match=message):
            _render(helm, _with(required, path, ""))
    # Without notify nothing asks for its endpoints.
    off = _with(_with(required, "services.notify.publicUrl", ""), "services.notify.enabled", False)
    assert "services.notify" not in _deployments(_render(helm, off))
    off = _with(_with(required, "services.tips.publicUrl", ""), "services.tips.enabled", False)
    docs = _render(helm, off)
    assert "services.tips" not in _deployments(docs)
    assert not [d for d in docs if d["metadata"]["name"] == "hub-safehub-tips"]


def test_incidents_refuses_a_second_replica(helm: Any) -> None:
    """Two active incidents workers could decide one incident version two ways."""
    two = _with(_required_values(), "services.incidents.replicas", 2)
    with pytest.raises(helm.HelmRenderError, match=r"services\.incidents\.replicas must be 1"):
        _render(helm, two)


def test_notify_refuses_values_it_cannot_run_with(helm: Any) -> None:
    required = _required_values()
    sms = _with(required, "services.notify.sms.enabled", True)
    with pytest.raises(helm.HelmRenderError, match=r"sms\.accountSid is required"):
        _render(helm, sms)
    sms = _with(sms, "services.notify.sms.accountSid", "AC" + "0" * 32)
    with pytest.raises(helm.HelmRenderError, match=r"sms\.fromNumber is required"):
        _render(helm, sms)
    both = _with(required, "services.notify.smtp.ssl", True)
    with pytest.raises(helm.HelmRenderError, match=r"starttls and .*ssl exclude each other"):
        _render(helm, both)
    ingress = _with(required, "services.notify.ingress.enabled", True)
    for url, message in (
        ("http://notify.district.example", "must be an https URL"),
        ("https://notify.district.example/notify", "no port or path"),
        ("https://notify.district.example:8443", "no port or path"),
    ):
        with pytest.raises(helm.HelmRenderError, match=message):
            _render(helm, _with(ingress, "services.notify.publicUrl", url))
    docs = _render(helm, _with(ingress, "services.notify.publicUrl", "https://n.example/"))
    assert any(d["kind"] == "Ingress" for d in docs)


def test_gateway_replicas_need_their_own_consumer_groups(helm: Any) -> None:
    shared = _with(_required_values(), "services.gateway.doorCommandsGroupPerPod", False)
    with pytest.raises(helm.HelmRenderError, match="doorCommandsGroupPerPod=false needs replicas"):
        _render(helm, shared)
    assert "services.gateway" in _deployments(
        _render(helm, _with(shared, "services.gateway.replicas", 1))
    )


def test_manifests_are_valid_kubernetes(
    rendered: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    import kubernetes_validate

    _, docs = rendered
    for doc in docs:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def test_what_is_deployed(rendered: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    values, docs = rendered
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    deployments = _deployments(docs)
    simulators = values.get("simulators", {}).get("enabled", False)
    assert set(deployments) == (PRODUCTION | VENDORS if simulators else PRODUCTION)
    for component in ("gateway", "psap-cad", "notify", "timeline", "tips"):
        assert ("Service", f"hub-safehub-{component}") in kinds
    ingress = values.get("services", {}).get("notify", {}).get("ingress", {}).get("enabled")
    assert (("Ingress", "hub-safehub-notify") in kinds) == bool(ingress)
    assert ("PodDisruptionBudget", "hub-safehub-gateway") in kinds
    assert ("PodDisruptionBudget", "hub-safehub-incidents") not in kinds  # a single writer
    assert ("PodDisruptionBudget", "hub-safehub-tips") not in kinds  # one pod: would block drains
    assert ("NetworkPolicy", "hub-safehub-tips") in kinds
    assert ("Job", "hub-safehub-topics") in kinds
    assert ("NetworkPolicy", "hub-safehub-default-deny") in kinds
    own_directory = not values.get("directory", {}).get("existingConfigMap")
    assert (("ConfigMap", "hub-safehub-directory") in kinds) == own_directory


def _fake_environment(env: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The variables as the kubelet would set them (secrets and downward API faked)."""
    downward = {
        "metadata.name": "hub-safehub-x-5d9c7-abcde",
        "metadata.namespace": "safety",
        "status.podIP": "10.1.2.3",
    }
    resolved: dict[str, str] = {}
    for name, entry in env.items():
        if "value" in entry:
            value = str(entry["value"])
            value = re.sub(r"\$\((\w+)\)", lambda m: resolved[m[1]], value)
        elif "fieldRef" in entry["valueFrom"]:
            value = downward[entry["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            value = (
                "postgresql+psycopg://u:p@db/safehub"
                if name.endswith(("LEDGER_URL", "DATABASE_URL"))
                else "s3cret"
            )
        resolved[name] = value
    return resolved


def test_each_deployable_loads_its_rendered_settings(
    rendered: tuple[dict[str, Any], list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, docs = rendered
    for module, deployment in _deployments(docs).items():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["command"] == ["python", "-m", module]
        env = _env(container)
        cls = _settings_class(module)
        stray = [
            v
            for v in env
            if v.startswith("SAFEHUB_") and v not in RUNTIME_VARIABLES and not _is_field(cls, v)
        ]
        assert not stray, f"{module} has no settings field for {stray}"
        for name in list(os.environ):
            if name.startswith(("SAFEHUB_", "KAFKA_", "OTEL_")):
                monkeypatch.delenv(name)
        for name, value in _fake_environment(env).items():
            monkeypatch.setenv(name, value)
        settings = load_settings(cls)  # ConfigError names a variable with a wrong value
        assert settings.kafka.bootstrap_servers == env["KAFKA_BOOTSTRAP_SERVERS"]["value"]
        # Every file a variable names (an SQLite store too) is inside a mounted volume.
        mounts = [m["mountPath"] for m in container["volumeMounts"]]
        for name, entry in env.items():
            value = str(entry.get("value", "")).removeprefix("sqlite:///")
            if name.startswith("SAFEHUB_") and value.startswith(("/etc/", "/tmp/", "/var/")):
                assert any(value.startswith(m + "/") for m in mounts), f"{module}: {name}={value}"
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        if module == "services.gateway":
            assert settings.gateway.port == ports["grpc"]
            assert settings.gateway.host == "0.0.0.0"
        if module == "connectors.psap_cad":
            assert settings.psap_cad.listen_port == ports["cad-callback"]
        if module == "services.notify":
            assert settings.notify.http_port == ports["http"]
            assert settings.notify.listen_host == "0.0.0.0"
            assert settings.notify.public_url == env["SAFEHUB_NOTIFY__PUBLIC_URL"]["value"]
            assert settings.notify.ack_secret.get_secret_value()
            assert settings.notify.status_token.get_secret_value()
            if settings.notify.sms_enabled:
                assert settings.notify.twilio.auth_token.get_secret_value()
        if module == "services.timeline":
            assert settings.timeline.http_port == ports["http"]
            assert settings.timeline.http_host == "0.0.0.0"
            if settings.timeline.grpc_enabled:
                assert settings.timeline.grpc_port == ports["grpc"]
                assert settings.timeline.grpc_host == "0.0.0.0"
                assert settings.timeline.tls_cert_file and settings.timeline.tls_ca_file
            else:
                assert "grpc" not in ports
        if module == "services.tips":
            tips = settings.tips
            assert tips.http_port == ports["http"] and tips.http_host == "0.0.0.0"
            assert tips.grpc_port == ports["grpc"] and tips.grpc_host == "0.0.0.0"
            assert tips.public_url == env["SAFEHUB_TIPS__PUBLIC_URL"]["value"]
            assert tips.tls_cert_file and tips.tls_key_file and tips.tls_ca_file
            assert tips.seal_keys.get_secret_value() and tips.contact_key.get_secret_value()
            assert env["SAFEHUB_TIPS__TWILIO_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"]
            assert tips.analysts_file is not None
            pod = deployment["spec"]["template"]["spec"]
            mount = next(m for m in container["volumeMounts"] if m["name"] == "tips-analysts")
            assert tips.analysts_file.parent == Path(mount["mountPath"]) and mount["readOnly"]
            volume = next(v for v in pod["volumes"] if v["name"] == "tips-analysts")
            assert volume["secret"]["items"] == [
                {"key": "analysts.json", "path": tips.analysts_file.name}
            ]
            limits = container["resources"]["limits"]
            assert "cpu" not in limits, "life-safety: no CPU limit (throttling delays a call)"


def test_pods_are_locked_down_and_drain(
    rendered: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    for module, deployment in _deployments(docs).items():
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["terminationGracePeriodSeconds"] >= 30
        assert pod["automountServiceAccountToken"] is False
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
        assert "emptyDir" in volumes[tmp["name"]], f"{module}: /tmp must be writable"
        assert _env(container)["SAFEHUB_READY_FILE"]["value"] == "/tmp/ready"
        assert container["readinessProbe"]["exec"]["command"][:2] == ["sh", "-c"]
    gateway = _deployments(docs)["services.gateway"]["spec"]["template"]["spec"]
    grace_s = float(_env(gateway["containers"][0])["SAFEHUB_GATEWAY__GRACE_S"]["value"])
    assert gateway["terminationGracePeriodSeconds"] > grace_s + 5


def test_services_and_network_policies_reach_the_listening_ports(
    rendered: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}

    def pods_selected_by(selector: dict[str, str]) -> list[dict[str, Any]]:
        return [
            d["spec"]["template"]
            for d in deployments.values()
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]

    def named_port(template: dict[str, Any], name: str) -> int:
        ports = {
            p["name"]: p["containerPort"]
            for p in template["spec"]["containers"][0].get("ports", [])
        }
        assert name in ports, f"no container port named {name}"
        return ports[name]

    for service in (d for d in docs if d["kind"] == "Service"):
        (template,) = pods_selected_by(service["spec"]["selector"])
        for port in service["spec"]["ports"]:
            named_port(template, port["targetPort"])
    gateway = deployments["hub-safehub-gateway"]["spec"]["template"]
    env = _env(gateway["spec"]["containers"][0])
    assert named_port(gateway, "grpc") == int(env["SAFEHUB_GATEWAY__PORT"]["value"])
    psap = deployments["hub-safehub-psap-cad"]["spec"]["template"]
    env = _env(psap["spec"]["containers"][0])
    assert named_port(psap, "cad-callback") == int(env["SAFEHUB_PSAP_CAD__LISTEN_PORT"]["value"])

    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    deny = next(p for p in policies if p["metadata"]["name"].endswith("default-deny"))
    assert deny["spec"]["ingress"] == [] and len(
        pods_selected_by(deny["spec"]["podSelector"]["matchLabels"])
    ) == len(deployments)
    opened = set()
    for policy in policies:
        for rule in policy["spec"]["ingress"]:
            for template in pods_selected_by(policy["spec"]["podSelector"]["matchLabels"]):
                for port in rule["ports"]:
                    named_port(template, port["port"])
                    opened.add(
                        (
                            template["metadata"]["labels"]["app.kubernetes.io/component"],
                            port["port"],
                        )
                    )
    public = {
        ("gateway", "grpc"),
        ("psap-cad", "cad-callback"),
        ("notify", "http"),
        ("timeline", "http"),
        ("tips", "http"),
        ("tips", "grpc"),
    }
    assert public <= opened
    assert opened <= public | {("timeline", "grpc"), ("doorstate", "http"), ("tips", "smtp")}
    timeline_grpc = any(p["name"] == "grpc" for p in _ports(deployments["hub-safehub-timeline"]))
    assert (("timeline", "grpc") in opened) == timeline_grpc
    tips_smtp = any(p["name"] == "smtp" for p in _ports(deployments["hub-safehub-tips"]))
    assert (("tips", "smtp") in opened) == tips_smtp  # only with e-mail tip lines
    for pdb in (d for d in docs if d["kind"] == "PodDisruptionBudget"):
        assert len(pods_selected_by(pdb["spec"]["selector"]["matchLabels"])) == 1


def test_single_writers_never_run_twice(
    rendered: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    """notify resumes every queued delivery at start; the timeline's pending claims race."""
    _, docs = rendered
    deployments = _deployments(docs)
    for module in SINGLE_WRITERS | ONE_POD:
        spec = deployments[module]["spec"]
        assert spec["replicas"] == 1, module
        assert spec["strategy"] == {"type": "Recreate"}, f"{module}: no overlap in a rollout"
        labels = spec["template"]["metadata"]["labels"]
        for pdb in (d for d in docs if d["kind"] == "PodDisruptionBudget"):
            selector = pdb["spec"]["selector"]["matchLabels"]
            assert not selector.items() <= labels.items(), f"{module}: a PDB would block drains"


def test_gateway_replicas_share_announcements_correctly(
    rendered: tuple[dict[str, Any], list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    values, docs = rendered
    gateway_values = {**VALUES["services"]["gateway"], **values["services"].get("gateway", {})}
    deployment = _deployments(docs)["services.gateway"]
    env = _env(deployment["spec"]["template"]["spec"]["containers"][0])
    for name in list(os.environ):
        if name.startswith(("SAFEHUB_", "KAFKA_", "OTEL_")):
            monkeypatch.delenv(name)
    for name, value in _fake_environment(env).items():
        monkeypatch.setenv(name, value)
    gateway = load_settings(_settings_class("services.gateway")).gateway
    pod = "hub-safehub-x-5d9c7-abcde"  # the fake POD_NAME
    if gateway_values["doorCommandsGroupPerPod"]:
        assert gateway.door_commands_group == f"gateway-door-commands-{pod}"
        assert gateway.announcements_group == f"gateway-announcements-{pod}"
    else:
        assert deployment["spec"]["replicas"] == 1
        assert gateway.announcements_group == "gateway-announcements"
    # A replica without the PA connector must not report FAILED while another plays it.
    several = deployment["spec"]["replicas"] > 1
    assert gateway.report_unattached_announcements is not several


def test_notify_ingress_routes_the_public_url_to_the_service(
    rendered: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    values, docs = rendered
    ingresses = [d for d in docs if d["kind"] == "Ingress"]
    if not values["services"]["notify"].get("ingress", {}).get("enabled"):
        assert not ingresses
        return
    from urllib.parse import urlsplit

    (ingress,) = ingresses
    service = next(
        d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "hub-safehub-notify"
    )
    host = urlsplit(values["services"]["notify"]["publicUrl"]).hostname
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == host
    assert ingress["spec"]["tls"][0]["hosts"] == [host]
    (path,) = rule["http"]["paths"]
    assert path["path"] == "/" and path["pathType"] == "Prefix"
    backend = path["backend"]["service"]
    assert backend["name"] == service["metadata"]["name"]
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}


def test_every_secret_the_pods_need_is_documented_at_the_top_of_values(helm: Any) -> None:
    """Operators create these Secrets before installing: values.yaml's header names them."""
    header = "".join(
        line
        for line in (CHART / "values.yaml").read_text().splitlines(keepends=True)
        if line.startswith("#")
    ).split("\n\n")[0]
    values = _required_values()
    for path, value in (
        ("services.notify.smtp.username", "safehub"),
        ("services.notify.sms.enabled", True),
        ("services.notify.sms.accountSid", "AC" + "0" * 32),
        ("services.notify.sms.fromNumber", "+15550100100"),
        ("services.notify.pushUrl", "https://push.example/send"),
        ("services.notify.cap.endpointUrl", "https://cap.example/alerts"),
        ("simulators.enabled", True),
    ):
        values = _with(values, path, value)
    secrets: dict[str, set[str]] = {}
    for deployment in (d for d in _render(helm, values) if d["kind"] == "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        for volume in pod["volumes"]:
            if "secret" in volume:
                secrets.setdefault(volume["secret"]["secretName"], set())
        for entry in pod["containers"][0]["env"]:
            ref = entry.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                secrets.setdefault(ref["name"], set()).add(ref["key"])
    assert {
        "safehub-notify",
        "safehub-timeline-tls",
        "safehub-reviewer-ca",
        "safehub-tips",
        "safehub-tips-tls",
    } <= set(secrets)
    for name, keys in secrets.items():
        assert re.search(rf"\b{re.escape(name)}\b", header), f"values.yaml header: Secret {name}"
        for key in keys:
            assert re.search(rf"\b{key}\b", header), f"values.yaml header: {name} key {key}"


def test_topics_job_is_a_hook_on_hub_settings(
    rendered: tuple[dict[str, Any], list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, docs = rendered
    job = next(d for d in docs if d["kind"] == "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["safehub", "topics", "create"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    env = _env(container)
    assert not [
        v
        for v in env
        if v.startswith("SAFEHUB_") and v not in RUNTIME_VARIABLES and not _is_field(HubSettings, v)
    ]
    for name in list(os.environ):
        if name.startswith(("SAFEHUB_", "KAFKA_")):
            monkeypatch.delenv(name)
    for name, value in _fake_environment(env).items():
        monkeypatch.setenv(name, value)
    settings = load_settings(HubSettings)
    assert settings.kafka.replication_factor == VALUES["kafka"]["replicationFactor"]


def test_the_chart_directory_configmap_is_a_valid_directory(helm: Any, tmp_path: Path) -> None:
    values = yaml.safe_load((CHART / "ci" / "required-values.yaml").read_text())
    (configmap,) = [d for d in _render(helm, values) if d["kind"] == "ConfigMap"]
    path = tmp_path / "directory.json"
    path.write_text(configmap["data"][VALUES["directory"]["key"]])
    Directory.load(path)
    values["directory"] = {"content": "[not json"}
    with pytest.raises(helm.HelmRenderError, match="not a JSON object"):
        _render(helm, values)


def test_the_readiness_probe_refuses_a_stale_ready_file(helm: Any, tmp_path: Path) -> None:
    """/tmp outlives a container restart; the probe must not trust the old container's file."""
    values = yaml.safe_load((CHART / "ci" / "required-values.yaml").read_text())
    deployment = _deployments(_render(helm, values))["services.incidents"]
    command = deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["exec"][
        "command"
    ]
    ready = tmp_path / "ready"

    def probe() -> int:
        env = {"PATH": os.environ["PATH"], "SAFEHUB_READY_FILE": str(ready)}
        return subprocess.run(command, env=env, check=False, timeout=10).returncode

    assert probe() != 0, "no file: not ready"
    ready.write_text("1")
    assert probe() == 0, "a file written after PID 1 started: ready"
    os.utime(ready, (1_000_000_000, 1_000_000_000))  # 2001: before this machine's PID 1
    assert probe() != 0, "a file older than PID 1: stale"


def test_notify_operators_are_mounted_from_their_secret_when_named(
    rendered: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    """Without an operators file nobody may approve family messages (safe, but unusable)."""
    values, docs = rendered
    secret = values.get("services", {}).get("notify", {}).get("operatorsSecret")
    pod = _deployments(docs)["services.notify"]["spec"]["template"]["spec"]
    env = _env(pod["containers"][0])
    if not secret:
        assert "SAFEHUB_NOTIFY__OPERATORS_FILE" not in env
        return
    path = Path(env["SAFEHUB_NOTIFY__OPERATORS_FILE"]["value"])
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "notify-operators")
    assert path.parent == Path(mount["mountPath"]) and mount["readOnly"]
    volume = next(v for v in pod["volumes"] if v["name"] == "notify-operators")
    assert volume["secret"]["secretName"] == secret
    assert volume["secret"]["items"] == [{"key": "operators.json", "path": path.name}]
