"""The one settings object, built once at start-up and passed down.

Every field can be set from the environment with the ``PIZZASHOP_`` prefix, nested groups with
``__`` (``PIZZASHOP_CONSUMER__BATCH_MAX=200``). Nothing reads the environment at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import limits
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class BrokerSettings(BaseModel):
    """The local Apache Kafka the project starts itself when no external cluster is named."""

    kafka_version: str = "4.2.0"
    heap: str = "512m"
    start_timeout_s: float = 90.0


class ConsumerSettings(BaseModel):
    """The consumer runtime: batching, retries, session liveness, transactions."""

    batch_max: int = Field(default=500, ge=1)
    batch_wait_ms: int = Field(default=100, ge=0)
    retry_budget_s: float = Field(
        default=300.0, ge=0, description="how long a failing record is retried before its DLQ"
    )
    retry_base_delay_s: float = Field(default=0.2, gt=0, description="first retry's backoff")
    retry_max_delay_s: float = Field(default=30.0, gt=0, description="cap of the backoff")
    rewind_delay_s: float = Field(
        default=1.0, gt=0, description="pause after a failed commit before the batch comes again"
    )
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000
    max_poll_interval_ms: int = 300_000
    transaction_timeout_ms: int = Field(
        default=10_000, description="a killed member's open transaction is aborted after this"
    )
    instance_id: str | None = Field(
        default=None,
        description="stable id of this worker (a pod ordinal): a restart then fences its "
        "predecessor's open transaction at once instead of after transaction_timeout_ms",
    )
    shutdown_deadline_s: float = 10.0
    transport: Literal["aiokafka", "confluent"] = Field(
        default="aiokafka",
        description="the Kafka client under the runtime (both exactly-once by transactions)",
    )


class EnricherSettings(BaseModel):
    """The enrichment workers: models, thresholds, reloads."""

    fraud_threshold: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="hold orders at or above this fraud probability; unset: the loaded fraud "
        "model's recorded threshold (chosen at training for target_false_hold_rate)",
    )
    target_false_hold_rate: float = Field(
        default=0.005,
        gt=0,
        lt=1,
        description="share of legitimate orders a hold may catch: `pizzashop train` chooses the "
        "threshold for it; the enricher warns when a model was trained for another",
    )
    reload_every_s: float = Field(
        default=5.0,
        gt=0,
        description="how often, between batches, to apply new versions and alias changes",
    )
    model_timeout_s: float = Field(default=2.0, gt=0, description="a slower model is degraded")
    model_timeouts: dict[str, float] = Field(
        default_factory=dict, description="per-model overrides of model_timeout_s, by name"
    )
    model_threads: int = Field(
        default=3, ge=1, description="threads for the models' forward passes (one per model)"
    )
    prefer_onnx: bool = True
    with_upsell: bool = True
    shadow_fraud_version: int | None = Field(
        default=None,
        description="a fraud model version to run as a challenger (decides nothing), pinned "
        "over the registry's challenger alias; unset: `pizzashop models shadow` decides, for "
        "every model",
    )


class MonitorSettings(BaseModel):
    """Watching the models online: drift against training, precision and recall from labels."""

    psi_alert: float = Field(
        default=0.2,
        gt=0,
        description="a population stability index at or above this is an alert (0.1: a little "
        "movement, 0.2: act)",
    )
    drift_window: int = Field(
        default=2000, ge=10, description="a version's latest scored orders its drift is read on"
    )
    drift_min_orders: int = Field(
        default=200, ge=1, description="fewer in the window and no PSI is given (too noisy)"
    )
    label_delay_s: float = Field(
        default=14 * 86_400.0,
        ge=0,
        description="how long after an order its chargeback may still come: precision and "
        "recall count orders placed at least this long before the latest chargeback",
    )
    refresh_s: float = Field(
        default=10.0, ge=0, description="GET /models and /metrics recompute at most this often"
    )


class OutboxSettings(BaseModel):
    """The outbox relay: batches, back-off, the lease that lets one relay per database publish."""

    batch_size: int = Field(default=500, ge=1, description="rows per Kafka transaction")
    idle_poll_s: float = Field(default=1.0, gt=0, description="poll when no commit woke it")
    retry_base_delay_s: float = Field(default=0.5, gt=0)
    retry_max_delay_s: float = Field(default=30.0, gt=0)
    lease_ttl_s: float = Field(
        default=30.0, gt=0, description="a crashed relay's lease passes on after this long"
    )
    request_timeout_ms: int = Field(default=30_000, ge=1000)
    progress_window: int = Field(
        default=50, ge=2, description="progress-topic offsets read back when reconciling"
    )


class HealthSettings(BaseModel):
    """When ``/health`` and ``/health/ready`` stop answering 200."""

    relay_failing_max_s: float = Field(
        default=30.0, gt=0, description="the outbox relay may fail this long before it counts"
    )
    outbox_max_age_s: float = Field(
        default=120.0, gt=0, description="the oldest unsent outbox row may wait this long"
    )
    db_timeout_s: float = Field(default=2.0, gt=0, description="a slower database is unready")


class ApiKey(BaseModel):
    """One API key: a name (for logs and rate limits; the secret itself is never logged), the
    secret a client sends in the ``X-API-Key`` header (16 characters or more, checked when the
    API starts, so that a refused secret is never echoed in a validation error), and the scopes
    it grants: ``place`` (orders), ``inspect`` (orders' status and scores), ``operate`` (dead
    letters, models)."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    secret: SecretStr
    scopes: frozenset[Literal["place", "inspect", "operate"]] = Field(min_length=1)
    rate_limit: str | None = Field(
        default=None, description="this key's limit on placing orders; unset: `rate_limit_per_key`"
    )

    @field_validator("rate_limit")
    @classmethod
    def _parses(cls, value: str | None) -> str | None:
        if value is not None and value.strip():
            limits.parse_many(value)  # a ValueError names what is wrong
        return value


class ApiSettings(BaseModel):
    """Who may call the API, and how much. Keys come as JSON:
    ``PIZZASHOP_API__KEYS='[{"name": "ops", "secret": "...", "scopes": ["inspect", "operate"]}]'``.

    Inspecting and operating always need a key with that scope (no keys: nobody may). Placing
    orders needs one only once some key has the ``place`` scope: a storefront's browsers cannot
    keep a secret, so the per-address rate limit is what guards an open order endpoint.
    Rate limits are in the ``limits`` notation (``"10/second;600/minute"``); empty means none.
    """

    model_config = ConfigDict(frozen=True, hide_input_in_errors=True)

    keys: tuple[ApiKey, ...] = ()
    rate_limit_per_address: str = Field(
        default="600/minute",
        description="placing orders without a valid key, per client address",
    )
    rate_limit_per_key: str = Field(
        default="6000/minute", description="placing orders with a key, per key"
    )
    max_body_bytes: int = Field(
        default=64 * 1024, ge=1024, description="a larger request body is refused with 413"
    )

    @field_validator("rate_limit_per_address", "rate_limit_per_key")
    @classmethod
    def _parses(cls, value: str) -> str:
        if value.strip():
            limits.parse_many(value)  # a ValueError names what is wrong
        return value


class SmtpSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8025
    sender: str = "receipts@pizzashop.local"
    username: str | None = None
    password: SecretStr | None = None
    timeout_s: float = 10.0
    connections: int = Field(
        default=16, ge=1, description="SMTP connections kept open; as many mails in flight"
    )
    claim_lease_s: float = Field(
        default=20.0,
        gt=0,
        description="a worker's claim on mails it is sending; a crashed worker's passes on after",
    )
    # 8, not 1: with one mail at a time between its 250 and its sent mark, the mark's
    # transaction set the pace (about 2x fewer receipts/s, bench/flows.py); the marks of the
    # eight share a transaction. The price is the bound on repeats after a crash.
    max_unconfirmed: int = Field(
        default=8,
        ge=1,
        description="mails the server may have accepted before we mark them sent; a crash "
        "repeats at most this many (same Message-ID)",
    )


class SchemaRegistrySettings(BaseModel):
    """A Confluent-API schema registry (``ingest.registry``). Off while ``url`` is unset: events
    travel as plain JSON, as before. The local one: ``pizzashop registry start`` prints its URL."""

    url: str | None = Field(
        default=None,
        description="Confluent-compatible base URL, e.g. http://127.0.0.1:8081/apis/ccompat/v7",
    )
    username: str | None = None
    password: SecretStr | None = None
    compatibility: Literal["BACKWARD_TRANSITIVE", "FULL_TRANSITIVE"] = Field(
        default="BACKWARD_TRANSITIVE", description="set on every subject the shop registers"
    )
    timeout_s: float = Field(default=5.0, gt=0, description="per request to the registry")
    heap: str = Field(default="256m", description="JVM heap of the local registry")
    start_timeout_s: float = Field(default=120.0, gt=0)


class KafkaSecuritySettings(BaseModel):
    """How every Kafka client (producers, consumers, admin clients, readers) authenticates.

    ``PIZZASHOP_KAFKA_SECURITY__SECURITY_PROTOCOL=SASL_PLAINTEXT``,
    ``PIZZASHOP_KAFKA_SECURITY__SASL_MECHANISM=SCRAM-SHA-256``, ``..._SASL_USERNAME``,
    ``..._SASL_PASSWORD``; TLS (``SSL``, ``SASL_SSL``) from PEM files. The default is what the
    local broker serves: PLAINTEXT, no credentials.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = Field(default=None, description="CA bundle (PEM) to trust")
    ssl_certfile: Path | None = Field(default=None, description="client certificate (PEM), mTLS")
    ssl_keyfile: Path | None = Field(default=None, description="client key (PEM), mTLS")
    ssl_key_password: SecretStr | None = None
    ssl_check_hostname: bool = True

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @model_validator(mode="after")
    def _complete(self) -> KafkaSecuritySettings:
        if self.uses_sasl and (not self.sasl_username or self.sasl_password is None):
            raise ValueError(f"{self.security_protocol} needs sasl_username and sasl_password")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ssl_certfile and ssl_keyfile go together")
        return self


class TracingSettings(BaseModel):
    """OpenTelemetry traces: where spans go. ``none`` exports nothing (ids still propagate in
    record headers); ``console`` prints each span; ``otlp`` sends them over OTLP/HTTP."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    exporter: Literal["none", "console", "otlp"] = "none"
    endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP traces URL, e.g. http://127.0.0.1:4318/v1/traces; unset: "
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or the exporter's default",
    )
    service_name: str = Field(default="pizzashop", description="the `service.name` resource")


class Settings(BaseSettings):
    """Everything configurable, in one place."""

    model_config = SettingsConfigDict(
        env_prefix="PIZZASHOP_",
        env_nested_delimiter="__",
        extra="ignore",
        frozen=True,
        # A malformed key list or password must not be echoed in the error.
        hide_input_in_errors=True,
    )

    kafka_bootstrap: str | None = Field(
        default=None,
        description="host:port of an external Kafka cluster; unset means start the local broker",
    )
    topic_prefix: str = Field(default="", description="prefix of every topic (tests isolate by it)")
    group_prefix: str = Field(default="pizzashop", description="prefix of every consumer group")
    home: Path = Field(default=Path(".pizzashop"), description="broker data, database, registry")
    cache_dir: Path = Field(default=Path(".cache"), description="jars resolved by Maven")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy async URL; unset means SQLite under `home`"
    )
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    metrics_port: int | None = Field(
        default=None,
        description="a worker process without the API serves /metrics on this port (0: any)",
    )
    cook_seconds: float = Field(default=0.5, ge=0, description="how long the kitchen bakes")
    kafka_start_wait_s: float = Field(
        default=300.0,
        ge=0,
        description="how long a process with flows waits at start for Kafka to answer",
    )
    saga_deadline_s: float = Field(
        default=600.0,
        gt=0,
        description="a captured order with no outcome this long after its capture is refunded",
    )
    orders_partitions: int = Field(default=6, ge=1)
    events_partitions: int = Field(default=6, ge=1)
    topic_replication_factor: int = Field(
        default=1, ge=1, description="replicas of each topic the shop creates (3 on a real cluster)"
    )
    registry_dir: Path | None = Field(
        default=None, description="versioned model artifacts; unset means `home`/registry"
    )
    broker: BrokerSettings = BrokerSettings()
    enricher: EnricherSettings = EnricherSettings()
    monitor: MonitorSettings = MonitorSettings()
    consumer: ConsumerSettings = ConsumerSettings()
    smtp: SmtpSettings = SmtpSettings()
    outbox: OutboxSettings = OutboxSettings()
    health: HealthSettings = HealthSettings()
    api: ApiSettings = ApiSettings()
    schema_registry: SchemaRegistrySettings = SchemaRegistrySettings()
    kafka_security: KafkaSecuritySettings = KafkaSecuritySettings()
    tracing: TracingSettings = TracingSettings()

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.home / 'pizzashop.db').resolve()}"

    @property
    def resolved_registry_dir(self) -> Path:
        return self.registry_dir if self.registry_dir is not None else self.home / "registry"

    def group(self, name: str) -> str:
        """The consumer group id of one service."""
        return f"{self.group_prefix}.{name}"
