"""The mTLS material of every gRPC server and client: one :class:`TlsFiles` setting.

A deployable names three PEM files in its section (``SAFEHUB_<SECTION>__TLS_CERT_FILE``,
``__TLS_KEY_FILE``, ``__TLS_CA_FILE``); :func:`tls_files` turns them into a checked
:class:`TlsFiles`, failing with :class:`ConfigError` naming the variables. A server built on
them always requires a client certificate signed by the CA (the caller's identity is its CN);
a client presents its own certificate and trusts only the CA.

``safehub up`` (and the tests) issue the files from the development PKI and pass them as
those variables: no production code knows the dev PKI.
"""

from __future__ import annotations

from pathlib import Path

import grpc
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

from safehub.kernel.errors import ConfigError
from safehub.kernel.settings import ENV_PREFIX, NESTED_DELIMITER, TlsFileSettings

#: The section fields of the three files, in the order they are reported.
FIELDS = {"cert": "tls_cert_file", "key": "tls_key_file", "ca": "tls_ca_file"}


def variable(section: str, field: str) -> str:
    """The environment variable of ``field`` in ``section`` (``SAFEHUB_GATEWAY__TLS_CA_FILE``)."""
    return f"{ENV_PREFIX}{section.upper()}{NESTED_DELIMITER}{field.upper()}"


class TlsFiles(BaseModel):
    """PEM files of one endpoint: its certificate (chain), its private key, the trusted CA.

    Validated with a ``{"section": ...}`` context, a missing file is reported by the variable
    that named it.
    """

    model_config = ConfigDict(frozen=True)

    cert: Path
    key: Path
    ca: Path

    @field_validator("cert", "key", "ca")
    @classmethod
    def _is_file(cls, path: Path, info: ValidationInfo) -> Path:
        if not path.is_file():
            section = (info.context or {}).get("section")
            field = FIELDS[str(info.field_name)]
            where = f" (set by {variable(section, field)})" if section else ""
            raise ValueError(f"TLS file {path} does not exist{where}")
        return path

    def server_credentials(self) -> grpc.ServerCredentials:
        """Server credentials that refuse any client without a certificate from the CA."""
        return grpc.ssl_server_credentials(
            [(self.key.read_bytes(), self.cert.read_bytes())],
            root_certificates=self.ca.read_bytes(),
            require_client_auth=True,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Client credentials: this certificate, trusting only the CA."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=self.key.read_bytes(),
            certificate_chain=self.cert.read_bytes(),
        )


def tls_files(section: str, settings: TlsFileSettings, *, purpose: str = "") -> TlsFiles:
    """The checked TLS files of ``section``'s settings; ConfigError naming the variables
    still to set (``purpose`` adds an alternative, e.g. "SAFEHUB_TIMELINE__GRPC_ENABLED=false").
    """
    cert, key, ca = settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file
    given = {"cert": cert, "key": key, "ca": ca}
    if cert is None or key is None or ca is None:
        missing = [variable(section, FIELDS[name]) for name, value in given.items() if not value]
        names = ", ".join(missing[:-1]) + (" and " if len(missing) > 1 else "") + missing[-1]
        extra = f" (or {purpose})" if purpose else ""
        raise ConfigError(f"the {section.lower()} needs mTLS files: set {names}{extra}")
    values: dict[str, Path] = {"cert": cert, "key": key, "ca": ca}
    try:
        return TlsFiles.model_validate(values, context={"section": section})
    except ValidationError as exc:
        messages = (str(error["msg"]).removeprefix("Value error, ") for error in exc.errors())
        problems = "; ".join(messages)
        raise ConfigError(problems) from exc
