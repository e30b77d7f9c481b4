"""Who may work tips: analysts with a bearer token, each for some districts or the state.

The analysts file (``SAFEHUB_TIPS__ANALYSTS_FILE``) keeps only each token's SHA-256::

    {"analysts": [{"id": "ana-state-1", "name": "State centre analyst",
                   "token_sha256": "<64 hex digits>", "districts": ["*"]}]}

``districts`` lists the districts whose tips the analyst may read and work (``*``: every
district, the state centre). Nothing configured lets nobody in.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from safehub.kernel.errors import ConfigError

ALL_DISTRICTS = "*"


def token_sha256(token: str) -> str:
    """The SHA-256 (hex) of a bearer token, as the analysts file stores it."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Analyst(BaseModel):
    """A tip analyst."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:-]+$")
    name: str = Field(min_length=1, max_length=200)
    token_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    districts: tuple[str, ...] = Field(min_length=1)

    def may_see(self, district_id: str) -> bool:
        """Whether this analyst works the district's tips."""
        return ALL_DISTRICTS in self.districts or district_id in self.districts


class AnalystsFile(BaseModel):
    """The analysts file."""

    model_config = ConfigDict(extra="forbid")

    analysts: list[Analyst] = Field(default_factory=list)

    @classmethod
    def load(cls, path: Path | None) -> AnalystsFile:
        """Read and validate it (ConfigError names the file and the problem, never a digest)."""
        if path is None:
            return cls()
        try:
            return cls.model_validate_json(path.read_bytes())
        except OSError as exc:
            raise ConfigError(
                f"SAFEHUB_TIPS__ANALYSTS_FILE {path} cannot be read: {exc.strerror}"
            ) from None
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise ConfigError(
                f"SAFEHUB_TIPS__ANALYSTS_FILE {path} is invalid: {problems}"
            ) from None

    def by_token(self, token: str) -> Analyst | None:
        """The analyst whose token this is (constant-time comparison of digests)."""
        digest = token_sha256(token)
        found = None
        for analyst in self.analysts:
            if hmac.compare_digest(analyst.token_sha256, digest):
                found = analyst
        return found
