"""The exception hierarchy: one root, specific subclasses that carry what a caller needs.

Every error has a short machine-readable ``reason`` (used as a metrics label and in
dead-letter headers) and, where one applies, the ``field`` at fault. Messages never
contain secrets (signing keys, SASL passwords, credentials in URLs).

Bad data (``SerdeError``, ``ValidationError``...) goes to the dead-letter topic;
``InfrastructureError`` (a service away) never does: the work is retried.
"""

from __future__ import annotations


class StreamscoreError(Exception):
    """Root of every error streamscore raises on purpose."""

    reason: str = "error"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class ConfigError(StreamscoreError):
    """Settings are missing, malformed or contradictory."""

    reason = "config"


# ------------------------------------------------------------------ infrastructure


class InfrastructureError(StreamscoreError):
    """A service streamscore depends on is away (not the input's fault). Never
    dead-lettered: the work is put back and retried with backoff until it answers."""

    reason = "infrastructure"


class RegistryUnavailableError(InfrastructureError):
    """The schema registry could not be reached (refused, timed out, 5xx), or answered
    as a registry that has just come back or lost its data does (see
    :class:`~streamscore.serde.wire.WriterSchemaCache`). Retryable."""

    reason = "registry_unavailable"


# --------------------------------------------------------------------------- serde


class SerdeError(StreamscoreError):
    """A message could not be turned into a record (or back). Route it to the DLQ."""

    reason = "serde"


class EmptyMessageError(SerdeError):
    """The message value is empty or null."""

    reason = "empty_message"


class MagicByteError(SerdeError):
    """The first byte is not the Confluent wire-format magic byte 0."""

    reason = "bad_magic_byte"

    def __init__(self, message: str, *, magic: int) -> None:
        super().__init__(message)
        self.magic = magic


class TruncatedMessageError(SerdeError):
    """The message is shorter than the wire-format header or its Avro body ends early."""

    reason = "truncated"


class UnknownSchemaError(SerdeError):
    """The schema id in the header is not known to the registry."""

    reason = "unknown_schema_id"

    def __init__(self, message: str, *, schema_id: int) -> None:
        super().__init__(message)
        self.schema_id = schema_id


class SchemaResolutionError(SerdeError):
    """The writer schema cannot be resolved to the reader schema (e.g. a required field
    the reader needs is absent from the writer schema, or types do not promote)."""

    reason = "schema_mismatch"


class WriterMissingFieldError(SchemaResolutionError):
    """The writer schema lacks a field the reader requires (and has no default for)."""

    reason = "missing_field"


class WriterTypeMismatchError(SchemaResolutionError):
    """A field's writer type cannot be promoted to the reader's type."""

    reason = "wrong_type"


class AvroDecodeError(SerdeError):
    """The Avro body is malformed for its writer schema."""

    reason = "avro_decode"


class UnexpectedNullError(SchemaResolutionError):
    """A null was written (a nullable writer union) for a field the reader requires.
    Resolved per record, as Avro does: the non-null records of that writer decode."""

    reason = "unexpected_null"


class UnreadableWriterSchemaError(SchemaResolutionError):
    """The registry's schema for this id cannot be parsed (not JSON, not valid Avro,
    or nested beyond the parser's limit). Cached: the id's schema never changes."""

    reason = "bad_writer_schema"

    def __init__(self, message: str, *, schema_id: int) -> None:
        super().__init__(message)
        self.schema_id = schema_id


class NestingTooDeepError(AvroDecodeError):
    """The Avro body nests records, arrays and maps deeper than the decoder's limit
    (checked before anything is decoded: deep recursion would overflow the C stack)."""

    reason = "too_deep"

    def __init__(self, message: str, *, limit: int | None) -> None:
        super().__init__(message)
        self.limit = limit


class ClaimedCountTooLargeError(AvroDecodeError):
    """An array or map block claims more items than the bytes left in the message can
    hold (checked before any item is read)."""

    reason = "bad_count"

    def __init__(self, message: str, *, count: int, bytes_left: int) -> None:
        super().__init__(message)
        self.count = count
        self.bytes_left = bytes_left


class ClaimedLengthTooLargeError(TruncatedMessageError):
    """A string, bytes or block length is larger than the bytes left in the message: a
    corrupt length, or a message cut short inside that value."""

    reason = "bad_length"

    def __init__(self, message: str, *, length: int, bytes_left: int) -> None:
        super().__init__(message)
        self.length = length
        self.bytes_left = bytes_left


def unexpected_decode_error(exc: BaseException, *, limit: int | None = None) -> SerdeError:
    """The typed error for an exception a decoder was not meant to raise on one message
    (fastavro's RecursionError, MemoryError, OverflowError...): that message's flaw."""
    if isinstance(exc, RecursionError):
        return NestingTooDeepError(f"the Avro body nests too deeply to decode: {exc}", limit=limit)
    return AvroDecodeError(
        f"the Avro body could not be decoded: {type(exc).__name__}: {str(exc)[:200]}"
    )


class UnknownKindError(SerdeError):
    """A feedback join-topic message says neither ``prediction`` nor ``label``."""

    reason = "unknown_kind"


class EncodeError(SerdeError):
    """A record does not fit the schema it is being encoded with."""

    reason = "encode"


class SchemaRegistrationError(SerdeError):
    """The registry refused a schema (e.g. incompatible with the subject's history)."""

    reason = "schema_registration"


class SubjectMissingError(ConfigError):
    """Registration is off (``auto_register = false``) and the subject an output is
    written under does not exist in the registry: create it, or allow registration."""

    reason = "subject_missing"

    def __init__(self, message: str, *, subject: str) -> None:
        super().__init__(message)
        self.subject = subject


class SubjectIncompatibleError(ConfigError):
    """Registration is off and the latest version of an output's subject cannot read
    the records streamscore writes (names the subject, the version and the field)."""

    reason = "subject_incompatible"

    def __init__(self, message: str, *, subject: str, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.subject = subject


class SchemaReferenceError(UnreadableWriterSchemaError):
    """A writer schema's references cannot be resolved: missing from the registry, or
    more of them (or nested deeper) than the bounds allow."""

    reason = "schema_reference"


class KeyDecodeError(SerdeError):
    """A message key does not decode as the configured ``[events] key_format``."""

    reason = "bad_key"


# ---------------------------------------------------------------------- validation


class ValidationError(StreamscoreError):
    """A decoded event does not satisfy the active feature spec."""

    reason = "invalid"


class MissingFieldError(ValidationError):
    reason = "missing_field"


class WrongTypeError(ValidationError):
    reason = "wrong_type"


class NonFiniteError(ValidationError):
    reason = "non_finite"


class OutOfRangeError(ValidationError):
    reason = "out_of_range"


class UnknownCategoryError(ValidationError):
    reason = "unknown_category"


# --------------------------------------------------------------------------- models


class ModelError(StreamscoreError):
    """A model bundle or update cannot be used."""

    reason = "model"


class BundleDecodeError(ModelError):
    """The bundle bytes are not a readable bundle."""

    reason = "undecodable"


class UnsignedBundleError(ModelError):
    reason = "unsigned"


class SignatureMismatchError(ModelError):
    """Signature does not verify: wrong key or tampered artifact."""

    reason = "bad_signature"


class UnknownSigningKeyError(SignatureMismatchError):
    """Signed by a key id the verifier does not list (an unknown publisher, or a key
    removed from the keyring after a rotation)."""

    reason = "unknown_key"


class UntrustedContentError(ModelError):
    """The artifact contains a type or operator outside the allow-list."""

    reason = "untrusted_content"


class IncompatibleFeatureSpecError(ModelError):
    """The bundle's feature spec does not fit the events this worker reads."""

    reason = "incompatible_features"


class ReferenceMismatchError(ModelError):
    """The bundle's reference batch does not reproduce its expected outputs."""

    reason = "reference_mismatch"


class NonFiniteOutputError(ModelError):
    """The model produced NaN or infinite outputs."""

    reason = "non_finite_output"


class BundleTooLargeError(ModelError):
    reason = "too_large"

    def __init__(self, message: str, *, size: int, limit: int) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


class NoModelError(ModelError):
    """Scoring was asked for while no model is active."""

    reason = "no_model"


class StaleModelVersionError(ModelError):
    """An update's version is not above the newest one its role has had."""

    reason = "stale_version"


class UnsignedEnvelopeError(ModelError):
    """A model-topic record carries no envelope signature (a retire written by anyone, or
    a record from before envelopes were signed: republish it)."""

    reason = "unsigned_envelope"


class DigestMismatchError(ModelError):
    """The envelope's ``sha256`` is not the SHA-256 of the artifact it carries."""

    reason = "sha256_mismatch"


class OutOfOrderEnvelopeError(ModelError):
    """A signed envelope that does not follow the role's current state (a replayed old
    record). ``current`` is the role's version (None: nothing active), ``newest`` the
    highest version the role has had."""

    reason = "out_of_order"

    def __init__(self, message: str, *, current: int | None, newest: int) -> None:
        super().__init__(message)
        self.current = current
        self.newest = newest


class StaleRollbackError(OutOfOrderEnvelopeError):
    """A rollback record that does not name the role's current version as the one it
    replaces, or that does not go down."""

    reason = "stale_rollback"


class StaleRetireError(OutOfOrderEnvelopeError):
    """A retire record that does not name the role's current version."""

    reason = "stale_retire"


# -------------------------------------------------------------------------- outputs


class OutputTooLargeError(StreamscoreError):
    """An output of a message is larger than its topic accepts (``max.message.bytes``):
    its prediction, or the message itself on its way to the late topic. The message is
    dead-lettered instead (cut to fit the dead-letter topic if needed)."""

    reason = "output_too_large"

    def __init__(self, message: str, *, size: int, limit: int, topic: str | None = None) -> None:
        super().__init__(message)
        self.topic = topic
        self.size = size
        self.limit = limit


# ---------------------------------------------------------------------------- kafka


class KafkaIOError(StreamscoreError):
    """A Kafka client operation failed in a way the loop cannot absorb."""

    reason = "kafka"


class DeliveryError(KafkaIOError):
    """The broker did not acknowledge an output message."""

    reason = "delivery"


class AccessError(KafkaIOError):
    """The cluster (or the registry) refuses this process: wrong credentials, a
    certificate it does not trust, or a missing ACL. Not an outage: retrying cannot help,
    a setting must change; the message names the cause and the setting to check. The
    process exits (non-zero) without committing the input it could not process."""

    reason = "access"


class MissingTopicError(ConfigError):
    """A topic this process writes to does not exist on the cluster, found at start
    before anything is consumed. streamscore never creates its outputs on the fly (a
    producer would error on each record, or the broker would auto-create the topic with
    its defaults): create the topic, or correct the setting that names it. ``topics``:
    the missing topics; the message names each with the flag, variable or project key
    that set it."""

    reason = "topic_missing"

    def __init__(self, message: str, *, topics: tuple[str, ...]) -> None:
        super().__init__(message)
        self.topics = topics


class TransactionFailedError(KafkaIOError):
    """An exactly-once transaction can neither complete nor be aborted (fenced, a fatal
    producer error, or the broker away past the retry budget): the worker must exit."""

    reason = "transaction"


# -------------------------------------------------------------------- local cluster


class ClusterError(StreamscoreError):
    """The local Kafka + registry cluster could not be installed, started or stopped."""

    reason = "cluster"


class JavaMissingError(ClusterError):
    reason = "java_missing"


class PortInUseError(ClusterError):
    reason = "port_in_use"

    def __init__(self, message: str, *, port: int) -> None:
        super().__init__(message)
        self.port = port


class DownloadError(ClusterError):
    reason = "download"


class ServerStartError(ClusterError):
    """A server died or did not become ready in time; ``log_path`` says where to look."""

    reason = "server_start"

    def __init__(self, message: str, *, log_path: str | None = None) -> None:
        super().__init__(message)
        self.log_path = log_path


# ------------------------------------------------------------------- project file


class ProjectFileError(ConfigError):
    """The project file (``streamscore.toml``) cannot be read or does not fit: names the
    file, the table and key at fault (where one applies) and what is wrong."""

    reason = "project_file"

    def __init__(
        self, message: str, *, path: str, table: str | None = None, key: str | None = None
    ) -> None:
        where = path
        if table is not None:
            where += f": [{table}]" + (f" {key}" if key is not None else "")
        super().__init__(f"{where}: {message}", field=key)
        self.path = path
        self.table = table
        self.key = key


class BadLabelError(ValidationError):
    """A label record's label does not fit the project's task (a class that is not a
    string, integer or boolean; a regression target that is not a finite number; a
    string longer than the bound)."""

    reason = "bad_label"


class BadEventTimeError(ValidationError):
    """An event's time field holds a value its configured encoding cannot read."""

    reason = "bad_event_time"


class StateStoreError(StreamscoreError):
    """The feedback worker's join state (its local store or its changelog) is unreadable
    or inconsistent: never dead-lettered, the worker stops rather than join wrongly."""

    reason = "state_store"
