"""The project file at the CLI: which file to read (:func:`project_path`) and reading it
(:func:`read_project`); ``streamscore init`` and ``streamscore check``, the CLI glue of
the project file's starter (:mod:`streamscore.features.infer`) and its check against the
events schema (:mod:`streamscore.features.check`). Reads the schema (the registry's latest
version of a subject, or an ``.avsc``) and a sample file; the logic is in those pure
modules.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from collections.abc import Mapping
from itertools import islice
from pathlib import Path
from typing import Any

from .core.config import Env
from .core.errors import (
    ConfigError,
    InfrastructureError,
    ProjectFileError,
    RegistryUnavailableError,
)
from .core.project import CONFIG_ENV, ProjectFile, parse_project

#: rows read from a sample at most
MAX_SAMPLE_ROWS = 100_000


def read_project(path: str) -> ProjectFile:
    """The project file at ``path`` (``--config`` or ``STREAMSCORE_CONFIG``)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ProjectFileError(f"cannot read it: {exc.strerror}", path=path) from None
    except UnicodeDecodeError:
        raise ProjectFileError("is not UTF-8 text", path=path) from None
    return parse_project(text, path)


def project_path(flag: str | None, env: Mapping[str, str]) -> str | None:
    """The project file to read: ``--config`` wins over ``STREAMSCORE_CONFIG``; none is
    read when neither names one."""
    return flag or env.get(CONFIG_ENV) or None


def latest_record(env: Env, subject: str) -> tuple[dict[str, Any], str]:
    """The latest schema registered under ``subject`` (parsed) and where it came from."""
    from .serde.wire import registry_client

    reg = registry_client(env.registry.client_config())
    try:
        found = reg.get_latest_version(subject)
    except Exception as exc:
        status = getattr(exc, "http_status_code", None)
        if status == 404:
            raise ConfigError(f"the registry has no schema under subject {subject!r}") from None
        if isinstance(exc, InfrastructureError):
            raise
        raise RegistryUnavailableError(
            f"cannot read subject {subject!r} from the registry: {type(exc).__name__}"
        ) from None
    return _record(found.schema.schema_str, subject), (
        f"subject {subject} version {found.version} (schema id {found.schema_id})"
    )


def _record(text: str, where: str) -> dict[str, Any]:
    try:
        schema = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{where}: not a JSON Avro schema: {exc}") from None
    if not isinstance(schema, dict) or schema.get("type") != "record":
        raise ConfigError(f"{where}: the events schema must be an Avro record")
    return schema


def avsc_record(path: str) -> tuple[dict[str, Any], str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    return _record(text, path), f"{path}"


def _csv_value(text: str) -> Any:
    """A CSV cell as a value: empty -> None, true/false -> bool, a number -> int/float."""
    if text == "":
        return None
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def read_sample(path: str) -> list[dict[str, Any]]:
    """At most :data:`MAX_SAMPLE_ROWS` rows of a ``.csv``, ``.avro`` (an object container
    file) or ``.parquet`` sample (nested records as dicts; a CSV's ``a.b`` column is
    field ``b`` of record ``a``)."""
    suffix = Path(path).suffix.lower()
    try:
        if suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as f:
                return [
                    {k: _csv_value(v) for k, v in row.items() if k is not None}
                    for row in islice(csv.DictReader(f), MAX_SAMPLE_ROWS)
                ]
        if suffix == ".avro":
            import fastavro

            with open(path, "rb") as f:
                return [
                    r for r in islice(fastavro.reader(f), MAX_SAMPLE_ROWS) if isinstance(r, dict)
                ]
        if suffix == ".parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise ConfigError(
                    "a .parquet sample needs pyarrow (pip install pyarrow), or give a "
                    ".csv or .avro sample"
                ) from None
            table = pq.read_table(path).slice(0, MAX_SAMPLE_ROWS)
            return list(table.to_pylist())
    except OSError as exc:
        raise ConfigError(f"cannot read the sample {path}: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the sample {path}: {exc}") from None
    raise ConfigError(f"the sample {path} must be a .csv, .avro or .parquet file")


def cmd_init(args: argparse.Namespace, env: Env) -> int:
    from .features.infer import infer_project

    if bool(args.subject) == bool(args.avsc):
        raise ConfigError("init needs one of --subject NAME (the registry) and --avsc FILE")
    out = Path(args.out)
    if out.exists() and not args.force:
        raise ConfigError(f"{out} exists: give --force to overwrite it")
    schema, origin = latest_record(env, args.subject) if args.subject else avsc_record(args.avsc)
    topic = args.topic or (
        args.subject.removesuffix("-value") if args.subject else env.topics.events
    )
    sample = read_sample(args.sample) if args.sample else None
    done = infer_project(schema, topic=topic, origin=origin, sample=sample)
    parse_project(done.text, str(out))  # what init writes, check reads
    out.write_text(done.text, encoding="utf-8")
    print(
        f"wrote {out}: {len(done.features)} features"
        + (f", {len(done.skipped)} fields left as comments" if done.skipped else "")
        + f"; id {done.id_field or '(not found)'}, time {done.time_field or '(not found)'}"
        + " (guessed: read it through)"
    )
    print(f"check it: streamscore check --config {out}")
    return 0


def cmd_check(args: argparse.Namespace, env: Env) -> int:
    from .features.check import check

    path = project_path(args.config, os.environ)
    if not path:
        raise ConfigError("check needs a project file: --config PATH (or STREAMSCORE_CONFIG)")
    project = read_project(path)
    if args.avsc:
        schema, origin = avsc_record(args.avsc)
    else:
        schema, origin = latest_record(
            env, args.subject or env.events.subject or f"{env.topics.events}-value"
        )
    misfits = check(project.events, project.features, schema)
    for m in misfits:
        print(f"{path}: {m}")
    if misfits:
        print(f"{len(misfits)} misfit(s) with {origin}")
        return 1
    n = len(project.features.fields) if project.features else 0
    print(f"OK: {path} fits {origin} (events fields and {n} features)")
    return 0


def add_commands(sub: Any) -> None:
    i = sub.add_parser(
        "init", help="write a starter project file from an events schema (registry or .avsc)"
    )
    i.add_argument("--subject", help="the events' registry subject (e.g. payments-value)")
    i.add_argument("--avsc", help="an Avro schema file instead of a registry subject")
    i.add_argument(
        "--sample", help="a sample of events (.csv, .avro, .parquet): ranges and categories"
    )
    i.add_argument("--topic", help="the events topic (default: the subject without -value)")
    i.add_argument("--out", default="streamscore.toml", help="default %(default)s")
    i.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    i.set_defaults(func=cmd_init)

    c = sub.add_parser(
        "check",
        help="check a project file against the events schema; exit 1 on any misfit",
    )
    c.add_argument(
        "--subject",
        help="the events' registry subject (default: [events] subject, else <events topic>-value)",
    )
    c.add_argument("--avsc", help="an Avro schema file instead of the registry")
    c.set_defaults(func=cmd_check)
