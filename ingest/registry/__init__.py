"""A Confluent-API schema registry for the shop's events: a local Apicurio Registry, a client,
and the serializer that frames records with schema ids.

- ``LocalRegistry``: Apicurio as a child JVM (tests, the demo); ``start_detached``/``status``/
  ``stop_detached``: one that outlives the CLI (``pizzashop registry start|stop|status``).
- ``RegistryClient``: register, fetch by id, compatibility (set, read, test).
- ``RegistrySerializer``: a ``Serializer`` (``ingest.codec``) writing the Confluent wire format
  under one subject per topic and event type, ``<topic>-<EventType>``.
- ``check``/``register``: the current models against the registered history.

Compatibility: every subject is BACKWARD_TRANSITIVE. The models are ``extra="forbid"``, so their
JSON Schemas are closed (``additionalProperties: false``). Against a closed schema, adding an
optional field is backward compatible (a new reader reads every old record) but not forward
compatible (the old schema forbids the new property), so FULL_TRANSITIVE would refuse the one
change the contract allows (the registry says ``OBJECT_TYPE_PROPERTY_SCHEMAS_NARROWED``).
Forward compatibility comes from the readers instead: ``decode`` validates a framed record
against the schema its own id names (the writer's), then reads it with ``extra="ignore"``.
Transitive, because a consumer may meet a record of any registered version on a topic with
seven days' retention, not only the latest.

The local build (``ingest/registry/pom.xml``, ``application.properties``) is Apicurio Registry
2.4.2.Final through the Quarkus 2.16.5 build step; newer lines miss artifacts in the Maven
registry reachable here. Found on the way, kept in those files:

- the thin ``apicurio-registry-app`` jar needs the Quarkus ``build`` goal in a wrapper project;
  its own ``application.properties`` is not read from a dependency, so a copy is the wrapper's
  (it sets the legacy-jar package and the in-memory H2 storage);
- three dependency fixes: everit-json-schema from Central (``com.github.erosb``),
  ``apicurio-common-app-components-config-index`` 0.1.10.Final (0.1.18 has no ``-deployment``
  artifact there), ``...-config-definitions`` pinned to 0.1.18.Final (else ``NoSuchMethodError
  DynamicConfigStorage.isReady()``);
- no Jandex index in the 2.4.2 jars: one ``quarkus.index-dependency`` group-id/artifact-id pair
  per ``io.apicurio`` jar (group-id alone fails with ``SRCFG00014``).

Apicurio quirks met: a refused registration is HTTP 409 with ``error_code`` 0, so the status
decides; ``/compatibility`` answers ``is_compatible`` with a ``reason`` listing diff types
(``SUBSCHEMA_TYPE_CHANGED``, ``OBJECT_TYPE_REQUIRED_PROPERTIES_MEMBER_ADDED``...); a bare
``{"type": "object"}`` is refused (42201); ids are content ids (one schema, one id across
subjects); a subject's level can be set before it has a version; the global level is ``NONE``,
so a subject without its own level accepts anything; storage is in memory: a restart is empty.

Measured on a 2-core machine shared with other test runs: first build 108 s (44 s resolving
the dependencies, 64 s the Quarkus build with its plugins; ~130 MB of jars into ``~/.m2``),
start to first answer 4-14 s with ``-Xmx256m``.
"""

from ingest.registry._build import APICURIO_VERSION, build, is_built
from ingest.registry.client import (
    IncompatibleSchema,
    RegistryClient,
    RegistryError,
    RegistryUnavailable,
)
from ingest.registry.contract import SubjectReport, check, register, shop_subjects
from ingest.registry.detached import RegistryState, start_detached, status, stop_detached
from ingest.registry.local import LocalRegistry
from ingest.registry.serializer import RegistrySerializer, subject_name

__all__ = [
    "APICURIO_VERSION",
    "IncompatibleSchema",
    "LocalRegistry",
    "RegistryClient",
    "RegistryError",
    "RegistrySerializer",
    "RegistryState",
    "RegistryUnavailable",
    "SubjectReport",
    "build",
    "check",
    "is_built",
    "register",
    "shop_subjects",
    "start_detached",
    "status",
    "stop_detached",
    "subject_name",
]
