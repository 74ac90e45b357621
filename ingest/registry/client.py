"""A small client of the Confluent Schema Registry REST API (what Apicurio serves under
``/apis/ccompat/v7``), for JSON Schemas.

Synchronous on purpose: the codec's ``encode``/``decode`` are synchronous and call it only on a
cache miss (once per subject or schema id per process), and the CLI is synchronous. Each call
is bounded by ``timeout_s``. Errors::

    RegistryUnavailable(TransientError)     cannot reach it, or it answered 5xx: try again
    IncompatibleSchema(ValidationFailed)    the subject's compatibility level refuses a schema
    RegistryError(PermanentError)           any other refusal (bad schema, bad request)

Apicurio 2.4 quirks handled here: a refused registration is HTTP 409 with ``error_code`` 0
(Confluent says 409 there too), so the status decides, not the code; schema ids are content
ids, so one schema under two subjects has one id.
"""

from __future__ import annotations

import json
import logging
from typing import Any, cast
from urllib.parse import quote

import httpx

from pizzashop.core.errors import PermanentError, TransientError, ValidationFailed

logger = logging.getLogger(__name__)

_CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class RegistryUnavailable(TransientError):
    """The schema registry could not be reached, timed out or failed (5xx)."""


class RegistryError(PermanentError):
    """The schema registry refused a request for good (a 4xx other than a compatibility one)."""


class IncompatibleSchema(ValidationFailed):
    """A schema the subject's compatibility level refuses; the message says why."""


class RegistryClient:
    """``url`` is the Confluent-compatible base URL; ``username``/``password`` basic auth."""

    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        self.url = url.rstrip("/")
        auth = httpx.BasicAuth(username, password or "") if username else None
        self._http = httpx.Client(
            base_url=self.url,
            auth=auth,
            timeout=timeout_s,
            headers={"Content-Type": _CONTENT_TYPE, "Accept": "application/json"},
            trust_env=False,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests --------------------------------------------------------------------------
    def _call(self, method: str, path: str, body: Any = None) -> httpx.Response:
        try:
            response = self._http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise RegistryUnavailable(f"schema registry {self.url}: {exc!r}") from exc
        if response.status_code >= 500:
            raise RegistryUnavailable(
                f"schema registry {self.url} {method} {path}: HTTP {response.status_code} "
                f"{response.text[:300]}"
            )
        return response

    @staticmethod
    def _refused(response: httpx.Response, what: str) -> RegistryError:
        return RegistryError(f"{what}: HTTP {response.status_code} {response.text[:500]}")

    @staticmethod
    def _payload(schema: dict[str, Any]) -> dict[str, Any]:
        return {"schemaType": "JSON", "schema": json.dumps(schema, sort_keys=True)}

    # -- what the shop uses ------------------------------------------------------------------
    def register(self, subject: str, schema: dict[str, Any]) -> int:
        """Register ``schema`` under ``subject`` (a no-op returning the same id when it is the
        latest already); its id. IncompatibleSchema when the subject's level refuses it."""
        response = self._call("POST", f"/subjects/{_q(subject)}/versions", self._payload(schema))
        if response.status_code == 409:
            raise IncompatibleSchema(
                f"the registry refused the schema for {subject}: "
                f"{response.json().get('message', response.text)[:800]}"
            )
        if response.status_code != 200:
            raise self._refused(response, f"registering {subject}")
        return int(response.json()["id"])

    def schema_by_id(self, schema_id: int) -> dict[str, Any] | None:
        """The schema of ``schema_id``; None when the registry has none."""
        response = self._call("GET", f"/schemas/ids/{schema_id}")
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self._refused(response, f"reading schema id {schema_id}")
        return cast(dict[str, Any], json.loads(response.json()["schema"]))

    def subjects(self) -> list[str]:
        response = self._call("GET", "/subjects")
        if response.status_code != 200:
            raise self._refused(response, "listing subjects")
        return [str(s) for s in response.json()]

    def versions(self, subject: str) -> list[int]:
        """The subject's versions, oldest first; empty for an unknown subject."""
        response = self._call("GET", f"/subjects/{_q(subject)}/versions")
        if response.status_code == 404:
            return []
        if response.status_code != 200:
            raise self._refused(response, f"listing versions of {subject}")
        return sorted(int(v) for v in response.json())

    def version(self, subject: str, version: int) -> tuple[int, dict[str, Any]]:
        """``(schema id, schema)`` of one version of ``subject``."""
        response = self._call("GET", f"/subjects/{_q(subject)}/versions/{version}")
        if response.status_code != 200:
            raise self._refused(response, f"reading {subject} version {version}")
        data = response.json()
        return int(data["id"]), cast(dict[str, Any], json.loads(data["schema"]))

    def set_compatibility(self, subject: str, level: str) -> None:
        response = self._call("PUT", f"/config/{_q(subject)}", {"compatibility": level})
        if response.status_code != 200:
            raise self._refused(response, f"setting compatibility of {subject} to {level}")

    def compatibility(self, subject: str) -> str | None:
        """The subject's own level; None when it has none (the global one applies)."""
        response = self._call("GET", f"/config/{_q(subject)}")
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self._refused(response, f"reading compatibility of {subject}")
        data = response.json()
        level = data.get("compatibilityLevel") or data.get("compatibility")
        return str(level) if level else None

    def incompatibilities(self, subject: str, schema: dict[str, Any], version: int) -> list[str]:
        """Why ``schema`` may not follow ``version`` of ``subject`` under the subject's level
        (empty: compatible)."""
        response = self._call(
            "POST",
            f"/compatibility/subjects/{_q(subject)}/versions/{version}?verbose=true",
            self._payload(schema),
        )
        if response.status_code != 200:
            raise self._refused(response, f"checking {subject} against version {version}")
        data = response.json()
        if data.get("is_compatible"):
            return []
        reason = data.get("reason") or data.get("messages") or "incompatible (no reason given)"
        return [str(reason)]


def _q(subject: str) -> str:
    return quote(subject, safe="")
