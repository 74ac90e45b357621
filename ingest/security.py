"""Kafka client security options, from ``KafkaSecuritySettings``, in each client's own words.

The composition root builds one mapping and passes it to every client it makes (producers,
consumers, admin clients, readers), so authentication is decided in one place:
``client_options`` for aiokafka's keyword arguments, ``librdkafka_options`` for the confluent
transport's configuration keys. With the default settings (PLAINTEXT) both are empty, and every
client is built exactly as before.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Mapping
from typing import Any

from aiokafka.conn import create_conn
from aiokafka.errors import SaslAuthenticationFailed
from aiokafka.helpers import create_ssl_context

from pizzashop.core.errors import ConfigError
from pizzashop.core.settings import KafkaSecuritySettings


def client_options(security: KafkaSecuritySettings) -> dict[str, Any]:
    """Keyword arguments for ``AIOKafkaProducer``/``AIOKafkaConsumer``/``AIOKafkaAdminClient``."""
    if security.security_protocol == "PLAINTEXT":
        return {}
    options: dict[str, Any] = {"security_protocol": security.security_protocol}
    if security.uses_sasl:
        password = security.sasl_password
        options |= {
            "sasl_mechanism": security.sasl_mechanism,
            "sasl_plain_username": security.sasl_username,
            "sasl_plain_password": password.get_secret_value() if password else None,
        }
    if security.uses_tls:
        options["ssl_context"] = _ssl_context(security)
    return options


def librdkafka_options(security: KafkaSecuritySettings) -> dict[str, Any]:
    """The same for librdkafka (``ingest.confluent_transport``)."""
    if security.security_protocol == "PLAINTEXT":
        return {}
    options: dict[str, Any] = {"security.protocol": security.security_protocol}
    if security.uses_sasl:
        password = security.sasl_password
        options |= {
            "sasl.mechanism": security.sasl_mechanism,
            "sasl.username": security.sasl_username,
            "sasl.password": password.get_secret_value() if password else None,
        }
    if security.uses_tls:
        files = {
            "ssl.ca.location": security.ssl_cafile,
            "ssl.certificate.location": security.ssl_certfile,
            "ssl.key.location": security.ssl_keyfile,
        }
        options |= {key: str(path) for key, path in files.items() if path is not None}
        if security.ssl_key_password is not None:
            options["ssl.key.password"] = security.ssl_key_password.get_secret_value()
        if not security.ssl_check_hostname:
            options["ssl.endpoint.identification.algorithm"] = "none"
    return options


async def check_credentials(
    bootstrap: str, options: Mapping[str, Any], *, timeout_s: float = 10.0
) -> None:
    """Refuse to go on with credentials the cluster rejects: a ``ConfigError`` naming the user,
    the mechanism and the broker's reason. aiokafka's clients only log a failed SASL handshake
    and then report that they could not bootstrap, which reads like a broker that is down;
    this one connection to the first bootstrap address tells the two apart. Anything other
    than a refusal (a broker that is away) is left for the clients to report and retry."""
    if "sasl_mechanism" not in options:
        return
    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
    try:
        conn = await create_conn(
            host,
            int(port),
            client_id="pizzashop-credentials",
            request_timeout_ms=int(timeout_s * 1000),
            **options,
        )
    except SaslAuthenticationFailed as exc:
        raise ConfigError(
            f"Kafka at {bootstrap} refused SASL user {options.get('sasl_plain_username')!r} "
            f"({options['sasl_mechanism']}): {exc}; check kafka_security.sasl_username and "
            "sasl_password"
        ) from None
    except Exception:  # not a refusal: the clients will say what it is
        return
    with contextlib.suppress(Exception):
        conn.close()


def _ssl_context(security: KafkaSecuritySettings) -> ssl.SSLContext:
    key_password = security.ssl_key_password
    context: ssl.SSLContext = create_ssl_context(
        cafile=str(security.ssl_cafile) if security.ssl_cafile else None,
        certfile=str(security.ssl_certfile) if security.ssl_certfile else None,
        keyfile=str(security.ssl_keyfile) if security.ssl_keyfile else None,
        password=key_password.get_secret_value() if key_password else None,
    )
    context.check_hostname = security.ssl_check_hostname
    return context
