"""``dicom-store-scp status``: did these instances reach HealthImaging?

Looks instances up by Study, Series or SOP Instance UID or by batch id, and prints per instance its state, import
job, image set and failure or warning reason: from the stack's instance table (when a table name is given) or
from the local store (``STORAGE_DIR``, where "stored" is the final state: local mode has no import; in stow mode,
HealthImaging's answer per instance, IMPORTED or FAILED, recorded there by stow_outcomes.py). A C-STORE the SCP
refused shows as ``REFUSED`` with its status and reason (dicom_store_contract.refusals), unless a copy of the
instance was stored or HealthImaging answered for it: that is the answer to "did it arrive?".

The instance table is read by key or through its indexes (``dicom_store_contract.tables``), never scanned. States
are printed as stored: the vocabulary belongs to the import pipeline (``functions/tracking.py``), not to this tool.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from dicom_store_contract import layout, refusals, tables

from . import stow_outcomes

# What a local instance's state is: its file is durably in the store (local mode ends here; Storage Commitment
# commits it, commitment.model owns the name).
from .commitment.model import STORED as LOCAL_STORED

# Exit statuses.
EXIT_FOUND = 0  # at least one instance matched
EXIT_NOT_FOUND = 1  # nothing matched
EXIT_USAGE = 2  # bad arguments, or the tables could not be read

# Columns of the readable table: heading, and the item attribute it shows.
_COLUMNS = (
    ("SOP INSTANCE UID", tables.SOP_INSTANCE_UID),
    ("STATE", "state"),
    ("BATCH", tables.BATCH_ID),
    ("JOB", tables.JOB_ID),
    ("IMAGE SET", "imageSetId"),
    ("REASON", "reason"),
)


class StatusError(Exception):
    """The lookup could not be made (a table missing, an index missing, no access)."""


@dataclass(frozen=True)
class Lookup:
    """What the user asked for: one attribute and its value."""

    attribute: str
    value: str

    @property
    def label(self) -> str:
        return {
            tables.STUDY_INSTANCE_UID: "study",
            tables.SERIES_INSTANCE_UID: "series",
            tables.SOP_INSTANCE_UID: "SOP instance",
            tables.BATCH_ID: "batch",
        }[self.attribute]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dicom-store-scp status",
        description="Did these instances reach AWS HealthImaging? One line per instance: state, import job, image "
        "set, failure or warning reason. Reads the stack's instance table when INSTANCE_TABLE_NAME (or "
        "--instance-table-name) is set, the local store (STORAGE_DIR) otherwise.",
        epilog="Exit status: 0 instances found, 1 none found, 2 bad arguments or the tables could not be read.",
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--study", metavar="UID", help="Study Instance UID")
    which.add_argument("--series", metavar="UID", help="Series Instance UID")
    which.add_argument("--sop", "--instance", dest="sop", metavar="UID", help="SOP Instance UID")
    which.add_argument("--batch", metavar="ID", help=f"batch id ({layout.BATCH_ID_FORM}), as the SCP logs it")
    parser.add_argument("--json", action="store_true", help="print JSON (one object: lookup, summary, instances)")
    # The server's spelling (INSTANCE_TABLE_NAME, --instance-table-name); the shorter one is still accepted.
    parser.add_argument(
        "--instance-table-name",
        "--instance-table",
        dest="instance_table",
        metavar="NAME",
        default=None,
        help="the stack's InstanceTableName output [INSTANCE_TABLE_NAME]; unset: read the local store",
    )
    parser.add_argument(
        "--job-table-name",
        "--job-table",
        dest="job_table",
        metavar="NAME",
        default=None,
        help="the stack's ImportJobTableName output [JOB_TABLE_NAME]; adds each import job's status",
    )
    parser.add_argument("--endpoint-url", metavar="URL", default=None, help="DynamoDB endpoint [AWS_ENDPOINT_URL]")
    parser.add_argument(
        "--region",
        metavar="REGION",
        default=None,
        help="the stack's region [AWS_REGION, AWS_DEFAULT_REGION, else the AWS config file's]",
    )
    parser.add_argument(
        "--storage-dir",
        metavar="DIR",
        default=None,
        help="the local store, when no instance table is given [STORAGE_DIR, default: ./storage]",
    )
    return parser


def _lookup(args: argparse.Namespace) -> Lookup:
    for attribute, value in (
        (tables.STUDY_INSTANCE_UID, args.study),
        (tables.SERIES_INSTANCE_UID, args.series),
        (tables.SOP_INSTANCE_UID, args.sop),
        (tables.BATCH_ID, args.batch),
    ):
        if value is not None:
            return Lookup(attribute, value.strip())
    raise AssertionError("argparse requires one lookup")


def _valid(lookup: Lookup) -> bool:
    # UIDs and batch ids name folders in the local store: only their own characters, never a path or a pattern.
    if lookup.attribute == tables.BATCH_ID:
        return layout.is_batch_id(lookup.value)
    return bool(lookup.value) and all(part.isdigit() for part in lookup.value.split("."))


# -- the stack's tables ---------------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A deserialized DynamoDB value as JSON can hold it (numbers arrive as Decimal, sets as set)."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {name: _plain(inner) for name, inner in value.items()}
    if isinstance(value, list | set | frozenset | tuple):
        return [_plain(inner) for inner in value]
    if isinstance(value, bytes | bytearray):
        return value.hex()
    return value


class InstanceTable:
    """The instance table (and optionally the job table), read through the indexes the template defines."""

    def __init__(self, dynamodb: Any, instance_table: str, job_table: str | None = None) -> None:
        from boto3.dynamodb.types import TypeDeserializer

        self.dynamodb = dynamodb
        self.instance_table = instance_table
        self.job_table = job_table
        self._deserializer = TypeDeserializer()

    def _item(self, item: Mapping[str, Any]) -> dict[str, Any]:
        return {name: _plain(self._deserializer.deserialize(value)) for name, value in item.items()}

    def find(self, lookup: Lookup) -> list[dict[str, Any]]:
        from botocore.exceptions import ClientError

        try:
            if lookup.attribute == tables.SOP_INSTANCE_UID:
                found = self.dynamodb.get_item(
                    TableName=self.instance_table,
                    Key={tables.SOP_INSTANCE_UID: {"S": lookup.value}},
                    ConsistentRead=True,
                ).get("Item")
                items = [self._item(found)] if found else []
            else:
                items = [self._item(item) for item in self._query(lookup)]
            if self.job_table:
                self._add_job_status(items)
        except ClientError as error:
            raise StatusError(_explain(error, self.instance_table)) from None
        return items

    def _query(self, lookup: Lookup) -> Iterator[dict[str, Any]]:
        index = {i.partition_key: i for i in tables.INSTANCE_INDEXES}[lookup.attribute]
        pages = self.dynamodb.get_paginator("query").paginate(
            TableName=self.instance_table,
            IndexName=index.name,
            KeyConditionExpression="#key = :value",
            ExpressionAttributeNames={"#key": index.partition_key},
            ExpressionAttributeValues={":value": {"S": lookup.value}},
        )
        for page in pages:
            yield from page.get("Items", [])

    def _add_job_status(self, items: list[dict[str, Any]]) -> None:
        statuses: dict[str, Any] = {}
        for job_id in sorted({str(item[tables.JOB_ID]) for item in items if item.get(tables.JOB_ID)}):
            job = self.dynamodb.get_item(
                TableName=self.job_table, Key={tables.JOB_ID: {"S": job_id}}, ConsistentRead=True
            ).get("Item")
            statuses[job_id] = self._item(job).get("jobStatus") if job else None
        for item in items:
            if item.get(tables.JOB_ID) in statuses:
                item["jobStatus"] = statuses[item[tables.JOB_ID]]


def _explain(error: Any, table: str) -> str:
    code = error.response.get("Error", {}).get("Code", "")
    message = error.response.get("Error", {}).get("Message", str(error))
    if code == "ResourceNotFoundException":
        return (
            f"{table}: no such table, or an index it needs is missing ({message}); a stack created from an "
            "older template lacks the series and batch indexes: update the stack"
        )
    if code == "ValidationException" and "index" in message.lower():
        return f"{table}: {message}; a stack created from an older template lacks this index: update the stack"
    return f"{table}: {code or 'error'}: {message}"


# -- the local store ------------------------------------------------------------------------------------------------


class LocalStore:
    """The local store laid out as docs/contracts.md says: an instance is final once its file is there."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def find(self, lookup: Lookup) -> list[dict[str, Any]]:
        incoming = self.root / layout.incoming_prefix("")
        refused = self.root / layout.REFUSED
        outcomes = self.root / layout.STOW_OUTCOMES
        if not incoming.is_dir() and not refused.is_dir() and not outcomes.is_dir():
            if self.root.is_dir():
                return []  # a store that has stored nothing yet (every association closed before a C-STORE, say)
            raise StatusError(f"{self.root}: no local store here (no such folder; give --storage-dir)")
        # incoming/<batch>/<study>/<series>/<sop>.dcm: the lookup fixes one level of the path.
        level = {
            tables.BATCH_ID: 0,
            tables.STUDY_INSTANCE_UID: 1,
            tables.SERIES_INSTANCE_UID: 2,
            tables.SOP_INSTANCE_UID: 3,
        }[lookup.attribute]
        parts = ["*", "*", "*", "*"]
        parts[level] = lookup.value
        instances = "/".join(parts)
        items = [self._item(path) for path in incoming.glob(instances + layout.INSTANCE_SUFFIX) if path.is_file()]
        stored = [item for item in items if item is not None]
        # Stow mode's: what HealthImaging answered for each instance (stow_outcomes.py), laid out as incoming/ is.
        stored += list(stow_outcomes.standing(self.root, instances).values())
        if lookup.attribute == tables.BATCH_ID:
            return stored  # a refused instance is in no batch
        held = {item[tables.SOP_INSTANCE_UID] for item in stored}
        return stored + [
            item for item in self._refusals(refused, level, lookup.value) if item[tables.SOP_INSTANCE_UID] not in held
        ]

    def _refusals(self, refused: Path, level: int, value: str) -> list[dict[str, Any]]:
        """The latest refusal of each instance the lookup names (refused/<day>/<study>/<series>/<sop>.json)."""
        parts = ["*", "*", "*", f"*{layout.REFUSAL_SUFFIX}"]
        parts[level] = value + (layout.REFUSAL_SUFFIX if level == 3 else "")
        latest: dict[str, dict[str, Any]] = {}
        for path in refused.glob("/".join(parts)):
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # removed by the retention sweep meanwhile, or not ours
            if not isinstance(record, dict) or record.get(tables.SOP_INSTANCE_UID) != path.stem:
                continue
            earlier = latest.get(path.stem)
            if earlier is None or str(record.get(refusals.REFUSED_AT, "")) > str(earlier.get(refusals.REFUSED_AT, "")):
                latest[path.stem] = record
        return list(latest.values())

    def _item(self, path: Path) -> dict[str, Any] | None:
        key = path.relative_to(self.root).as_posix()
        batch_id = path.parents[2].name
        if not layout.is_batch_id(batch_id):
            return None
        study, series, sop = layout.uids_of_instance_key(key)
        sealed = (self.root / layout.manifest_key("", batch_id)).is_file()
        return {
            tables.SOP_INSTANCE_UID: sop,
            tables.STUDY_INSTANCE_UID: study,
            tables.SERIES_INSTANCE_UID: series,
            "state": LOCAL_STORED,
            tables.BATCH_ID: batch_id,
            "key": key,
            "size": path.stat().st_size,
            # The manifest is written when the association ends: until then the batch is still receiving.
            "batchSealed": sealed,
        }


# -- output ---------------------------------------------------------------------------------------------------------


def _reason(item: Mapping[str, Any]) -> str:
    """Why an instance failed, or what its import warned about, whatever attribute the pipeline put it in."""
    if item.get("state") == refusals.REFUSED:
        return refusals.describe(item)
    reasons = [str(item["failureReason"])] if item.get("failureReason") else []
    for name in sorted(item):
        if "warning" in name.lower() and item[name] not in (None, "", [], {}):
            value = item[name]
            reasons.append(", ".join(map(str, value)) if isinstance(value, list) else str(value))
    if item.get("isPrimary") is False:
        # AHI put it in a non-primary image set (it conflicted with what the data store already held).
        reasons.append("non-primary image set")
    return "; ".join(reasons)


def _sorted(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(
        items,
        key=lambda i: (
            str(i.get(tables.STUDY_INSTANCE_UID, "")),
            str(i.get(tables.SERIES_INSTANCE_UID, "")),
            str(i.get(tables.SOP_INSTANCE_UID, "")),
            str(i.get(tables.BATCH_ID, "")),
        ),
    )


def summary(items: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Instances per state, in the order states first appear."""
    return dict(Counter(str(item.get("state", "")) for item in items))


def render_json(lookup: Lookup, source: str, items: list[dict[str, Any]]) -> str:
    document = {
        "lookup": {lookup.attribute: lookup.value},
        "source": source,
        "count": len(items),
        "summary": summary(items),
        "instances": [{**item, "reason": _reason(item)} for item in _sorted(items)],
    }
    return json.dumps(document, indent=1, sort_keys=False, default=str)


def render_table(lookup: Lookup, source: str, items: list[dict[str, Any]]) -> str:
    lines = [f"{lookup.label} {lookup.value} in {source}: {len(items)} instance(s)"]
    if not items:
        return lines[0] + "\n"
    lines[0] += ": " + ", ".join(f"{count} {state}" for state, count in summary(items).items())
    group: tuple[str, str] | None = None
    rows: list[list[str]] = []
    grouped: list[tuple[tuple[str, str], list[str]]] = []
    for item in _sorted(items):
        cells = {**{name: str(item.get(name) or "") for _, name in _COLUMNS}, "reason": _reason(item)}
        if item.get("jobStatus"):
            cells[tables.JOB_ID] += f" ({item['jobStatus']})"
        if item.get("batchSealed") is False:
            cells["reason"] = cells["reason"] or "batch still open: association in progress"
        row = [cells[name] for _, name in _COLUMNS]
        rows.append(row)
        grouped.append(
            ((str(item.get(tables.STUDY_INSTANCE_UID, "")), str(item.get(tables.SERIES_INSTANCE_UID, ""))), row)
        )
    shown = [i for i, _ in enumerate(_COLUMNS) if any(row[i] for row in rows) or i < 2]
    widths = {i: max(len(_COLUMNS[i][0]), *(len(row[i]) for row in rows)) for i in shown}

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cells[i].ljust(widths[i]) for i in shown).rstrip()

    for key, row in grouped:
        if key != group:
            group = key
            lines += ["", f"study {key[0]}  series {key[1]}", "  " + line([heading for heading, _ in _COLUMNS])]
        lines.append("  " + line(row))
    return "\n".join(lines) + "\n"


# -- command --------------------------------------------------------------------------------------------------------


def _source(args: argparse.Namespace, environ: Mapping[str, str]) -> tuple[Any, str]:
    instance_table = args.instance_table or environ.get("INSTANCE_TABLE_NAME", "")
    if instance_table:
        import boto3

        job_table = args.job_table or environ.get("JOB_TABLE_NAME", "") or None
        # botocore reads AWS_DEFAULT_REGION only; ECS, Lambda and most people's shells set AWS_REGION.
        region = args.region or environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or None
        session = boto3.session.Session(region_name=region)
        if session.region_name is None:
            raise StatusError("no AWS region: set AWS_REGION or give --region (the stack's region)")
        dynamodb = session.client("dynamodb", endpoint_url=args.endpoint_url)
        return InstanceTable(dynamodb, instance_table, job_table), f"table {instance_table}"
    if environ.get("DICOM_BUCKET") and not args.storage_dir:
        # Where the SCP stores to S3, the local folder holds nothing worth reporting: the table does.
        raise StatusError("DICOM_BUCKET is set: give the stack's instance table (--instance-table-name)")
    root = Path(args.storage_dir or environ.get("STORAGE_DIR", "") or "./storage").resolve()
    return LocalStore(root), f"local store {root}"


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    args = _parser().parse_args(argv)
    lookup = _lookup(args)
    if not _valid(lookup):
        expected = layout.BATCH_ID_FORM if lookup.attribute == tables.BATCH_ID else "a UID (digits and dots)"
        print(f"dicom-store-scp status: {lookup.value!r} is not {expected}", file=sys.stderr)
        return EXIT_USAGE
    try:
        source, description = _source(args, environ)
        items = source.find(lookup)
    except StatusError as error:
        print(f"dicom-store-scp status: {error}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as error:  # botocore: no credentials, no region, endpoint unreachable
        print(f"dicom-store-scp status: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_USAGE
    render = render_json if args.json else render_table
    sys.stdout.write(render(lookup, description, items))
    return EXIT_FOUND if items else EXIT_NOT_FOUND
