"""The stack (``DICOM_BUCKET``): transactions as items of the commitment table, outcomes from the instance table.

The task reporting a transaction holds a lease on its item (a conditional write), so several tasks never report one
transaction twice; a task that stops leaves its transactions to the next one. An instance is final once the import
has reported on it (imported, failed or timed out) or the table records it under another SOP class, or when it
is still absent from the instance table ``COMMITMENT_MISSING_SECONDS`` after the request. A refusal's item
(``REFUSED``: nothing was stored) counts as absent: the sender may still send a good copy.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
import uuid
from typing import Any

from dicom_store_contract import tables

from ..storage import StorageError
from .model import RETENTION, Outcome, Reference, Transaction, _now, _parse_iso, failure_reason

# A task owns a transaction it reports for this long after its last write; a task that stops leaves it to the next
# one that starts. Far longer than one delivery attempt (SAME_ASSOCIATION_WAIT_SECONDS + a connection timeout), so
# two tasks never send one report: the ownership is a conditional write.
LEASE_SECONDS = 300


def _condition_failed(error: Exception) -> bool:
    response = getattr(error, "response", {}) or {}
    return bool(response.get("Error", {}).get("Code") == "ConditionalCheckFailedException")


class DynamoTransactions:
    """One item per transaction in the commitment table; the reporting task is its ``owner`` (a lease)."""

    def __init__(self, dynamodb: Any, table: str, owner: str | None = None) -> None:
        self.dynamodb = dynamodb
        self.table = table
        self.owner = owner or uuid.uuid4().hex

    def prepare(self) -> None:
        pass

    def _key(self, record_id: str) -> dict[str, Any]:
        return {tables.RECORD_ID: {"S": record_id}}

    def _values(self, transaction: Transaction) -> dict[str, Any]:
        now = time.time()
        values: dict[str, Any] = {
            ":document": {"S": json.dumps(transaction.to_json())},
            ":state": {"S": transaction.state},
            ":owner": {"S": self.owner},
            ":lease": {"N": str(int(now + LEASE_SECONDS))},
        }
        return values

    def create(self, transaction: Transaction) -> bool:
        record_id = transaction.record_id or transaction.transaction_uid
        item = {
            **self._key(record_id),
            "document": {"S": json.dumps(transaction.to_json())},
            "state": {"S": transaction.state},
            tables.PENDING: {"S": "1"},
            "owner": {"S": self.owner},
            "leaseUntil": {"N": str(int(time.time() + LEASE_SECONDS))},
            tables.EXPIRES_AT: {"N": str(int((_parse_iso(transaction.deadline) + RETENTION).timestamp()))},
        }
        try:
            self.dynamodb.put_item(
                TableName=self.table, Item=item, ConditionExpression=f"attribute_not_exists({tables.RECORD_ID})"
            )
        except Exception as error:
            if _condition_failed(error):
                return False
            raise StorageError(f"{self.table}: {error}") from error
        return True

    def update(self, transaction: Transaction) -> None:
        record_id = transaction.record_id or transaction.transaction_uid
        values = self._values(transaction)
        expression = "SET #document = :document, #state = :state, #lease = :lease"
        if transaction.state == "pending":
            expression += ", #pending = :pending"
            values[":pending"] = {"S": "1"}
        else:
            finished = _parse_iso(transaction.finished_at) if transaction.finished_at else _now()
            expression += ", #expires = :expires REMOVE #pending"
            values[":expires"] = {"N": str(int((finished + RETENTION).timestamp()))}
        try:
            self.dynamodb.update_item(
                TableName=self.table,
                Key=self._key(record_id),
                UpdateExpression=expression,
                ConditionExpression="#owner = :owner",
                ExpressionAttributeNames={
                    "#document": "document",
                    "#state": "state",
                    "#owner": "owner",
                    "#lease": "leaseUntil",
                    "#pending": tables.PENDING,
                    **({"#expires": tables.EXPIRES_AT} if transaction.state != "pending" else {}),
                },
                ExpressionAttributeValues=values,
            )
        except Exception as error:
            if _condition_failed(error):
                raise StorageError(f"{record_id}: another task reports this transaction now") from None
            raise StorageError(f"{self.table}: {error}") from error

    def load(self, record_id: str) -> Transaction | None:
        item = self.dynamodb.get_item(TableName=self.table, Key=self._key(record_id), ConsistentRead=True).get("Item")
        return Transaction.from_json(json.loads(item["document"]["S"])) if item else None

    def record_ids(self) -> list[str]:
        index = tables.PENDING_COMMITMENTS
        pages = self.dynamodb.get_paginator("query").paginate(
            TableName=self.table,
            IndexName=index.name,
            KeyConditionExpression="#pending = :pending",
            ExpressionAttributeNames={"#pending": index.partition_key},
            ExpressionAttributeValues={":pending": {"S": "1"}},
        )
        return [item[tables.RECORD_ID]["S"] for page in pages for item in page.get("Items", [])]

    def claim(self, record_id: str) -> bool:
        now = int(time.time())
        try:
            self.dynamodb.update_item(
                TableName=self.table,
                Key=self._key(record_id),
                UpdateExpression="SET #owner = :owner, leaseUntil = :lease",
                ConditionExpression="attribute_exists(recordId) AND "
                "(attribute_not_exists(#owner) OR #owner = :owner OR leaseUntil < :now)",
                ExpressionAttributeNames={"#owner": "owner"},
                ExpressionAttributeValues={
                    ":owner": {"S": self.owner},
                    ":lease": {"N": str(now + LEASE_SECONDS)},
                    ":now": {"N": str(now)},
                },
            )
        except Exception as error:
            if _condition_failed(error):
                return False
            raise
        return True

    def release(self, record_id: str) -> None:
        with contextlib.suppress(Exception):
            self.dynamodb.update_item(
                TableName=self.table,
                Key=self._key(record_id),
                UpdateExpression="REMOVE #owner, leaseUntil",
                ConditionExpression="#owner = :owner",
                ExpressionAttributeNames={"#owner": "owner"},
                ExpressionAttributeValues={":owner": {"S": self.owner}},
            )

    def remove(self, record_id: str) -> None:
        pass  # the table's time to live removes items (expiresAt)


# BatchGetItem answers 200 with UnprocessedKeys when the table's throughput is spent, which botocore does not retry:
# asked again after a jittered wait doubling from 0.1 s (at most 5 s), a bounded number of passes, then a
# StorageError: the scheduler logs the step and evaluates the transaction again later.
UNPROCESSED_PASSES = 10
_UNPROCESSED_FIRST = 0.1
_UNPROCESSED_CAP = 5.0


class DynamoOutcomes:
    """An instance is committed once the instance table says HealthImaging imported it (model.failure_reason)."""

    def __init__(self, dynamodb: Any, instance_table: str, missing_seconds: float, sleep: Any = time.sleep) -> None:
        self.dynamodb = dynamodb
        self.instance_table = instance_table
        self.missing_seconds = missing_seconds
        self._sleep = sleep

    def evaluate(self, transaction: Transaction) -> Outcome:
        items = self._items([r.sop_instance_uid for r in transaction.references])
        waited = (_now() - _parse_iso(transaction.received_at)).total_seconds()
        reasons: dict[Reference, int | None] = {}
        for reference in transaction.references:
            # Absent: not recorded yet (its batch is sealed when its association ends) or never received.
            item = items.get(reference.sop_instance_uid) or {}
            state = item.get("state", {}).get("S", "")
            sop_class = item.get("sopClassUID", {}).get("S", "")
            reasons[reference] = failure_reason(reference, state, sop_class, waited, self.missing_seconds)
        return Outcome(reasons)

    def _items(self, uids: list[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        unique = list(dict.fromkeys(uids))
        # BatchGetItem reads at most 100 keys per call (by key: no scan).
        for start in range(0, len(unique), 100):
            keys = [{tables.SOP_INSTANCE_UID: {"S": uid}} for uid in unique[start : start + 100]]
            request: dict[str, Any] = {self.instance_table: {"Keys": keys, "ConsistentRead": True}}
            for unprocessed_pass in range(UNPROCESSED_PASSES):
                if unprocessed_pass:
                    ceiling = min(_UNPROCESSED_CAP, _UNPROCESSED_FIRST * 2 ** (unprocessed_pass - 1))
                    self._sleep(random.uniform(0, ceiling))  # noqa: S311 (jitter, not a secret)
                response = self.dynamodb.batch_get_item(RequestItems=request)
                for item in response.get("Responses", {}).get(self.instance_table, []):
                    found[item[tables.SOP_INSTANCE_UID]["S"]] = item
                request = response.get("UnprocessedKeys") or {}
                if not request:
                    break
            else:
                raise StorageError(
                    f"the instance table {self.instance_table} left keys unread after {UNPROCESSED_PASSES} passes"
                    " (its throughput is spent)"
                )
        return found
