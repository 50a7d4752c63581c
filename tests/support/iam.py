"""Which IAM permission each AWS API call needs, and whether a role's policy statements grant it.

Coarse on purpose: an action matches by name (or wildcard), a resource by ARN pattern, and only the condition
keys the template uses (``s3:prefix``, ``iam:PassedToService``, ``dynamodb:Attributes`` and
``dynamodb:ReturnValues`` of a PutItem) are evaluated; any other condition denies.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

from .cfn import ACCOUNT_ID, REGION


@dataclass(frozen=True)
class Permission:
    action: str  # service:Action
    resource: str  # ARN
    # Condition keys the request carries: one value, or several (a multivalued key such as dynamodb:Attributes).
    context: tuple[tuple[str, str | tuple[str, ...]], ...] = ()

    def __str__(self) -> str:
        extra = "".join(f" {k}={v!r}" for k, v in self.context)
        return f"{self.action} on {self.resource}{extra}"


@dataclass
class ApiCall:
    service: str  # boto3 service name: s3, dynamodb, stepfunctions, medical-imaging
    operation: str  # API operation name: GetObject, PutItem, ...
    params: dict[str, Any] = field(default_factory=dict)
    status: int = 200

    def __str__(self) -> str:
        return f"{self.service}:{self.operation} -> {self.status}"


# S3 operations whose IAM action differs from the operation name (Service Authorization Reference).
_S3_ACTIONS = {
    "HeadObject": "s3:GetObject",
    "ListObjectsV2": "s3:ListBucket",
    "HeadBucket": "s3:ListBucket",
    "ListObjects": "s3:ListBucket",
    "CreateMultipartUpload": "s3:PutObject",
    "UploadPart": "s3:PutObject",
    "CompleteMultipartUpload": "s3:PutObject",
    "AbortMultipartUpload": "s3:AbortMultipartUpload",
    "GetObject": "s3:GetObject",
    "PutObject": "s3:PutObject",
}
_PREFIX = {"dynamodb": "dynamodb", "stepfunctions": "states", "medical-imaging": "medical-imaging"}


def permissions(call: ApiCall) -> list[Permission]:
    """The permissions AWS checks for ``call``; raises for a call this table does not know yet."""
    p = call.params
    if call.service == "s3":
        action = _S3_ACTIONS.get(call.operation)
        if action is None:
            raise LookupError(f"no IAM mapping for s3:{call.operation}; add it to tests/support/iam.py")
        if action == "s3:ListBucket":
            context = (("s3:prefix", p["Prefix"]),) if "Prefix" in p else ()
            return [Permission(action, f"arn:aws:s3:::{p['Bucket']}", context)]
        needed = [Permission(action, f"arn:aws:s3:::{p['Bucket']}/{p['Key']}")]
        if call.operation in ("GetObject", "HeadObject") and call.status == 404:
            # S3 answers 404 for a missing key only to a caller allowed s3:ListBucket on the bucket (the request
            # carries no s3:prefix); anyone else gets 403 AccessDenied, which code expecting 404 treats as an error.
            needed.append(Permission("s3:ListBucket", f"arn:aws:s3:::{p['Bucket']}"))
        return needed
    if call.service == "dynamodb" and "RequestItems" in p:
        # One permission per table the request names (the Service Authorization Reference: the table resource).
        return [
            Permission(f"dynamodb:{call.operation}", f"arn:aws:dynamodb:{REGION}:{ACCOUNT_ID}:table/{table}")
            for table in p["RequestItems"]
        ]
    if call.service == "dynamodb":
        arn = f"arn:aws:dynamodb:{REGION}:{ACCOUNT_ID}:table/{p['TableName']}"
        if "IndexName" in p:
            arn += f"/index/{p['IndexName']}"
        context: list[tuple[str, str | tuple[str, ...]]] = []
        if call.operation == "PutItem" and "Item" in p:
            # PutItem's dynamodb:Attributes are the item's attribute names (the key among them).
            context.append(("dynamodb:Attributes", tuple(sorted(p["Item"]))))
        if "ReturnValues" in p:
            context.append(("dynamodb:ReturnValues", p["ReturnValues"]))
        return [Permission(f"dynamodb:{call.operation}", arn, tuple(context))]
    if call.service == "stepfunctions":
        if call.operation in ("SendTaskSuccess", "SendTaskFailure", "SendTaskHeartbeat"):
            return [Permission(f"states:{call.operation}", "*")]  # no resource type: the token names the task
        arn = p.get("stateMachineArn") or p.get("executionArn")
        if arn is None:
            raise LookupError(f"no resource for states:{call.operation}")
        return [Permission(f"states:{call.operation}", arn)]
    if call.service == "medical-imaging":
        datastore = f"arn:aws:medical-imaging:{REGION}:{ACCOUNT_ID}:datastore/{p['datastoreId']}"
        needed = [Permission(f"medical-imaging:{call.operation}", datastore)]
        if "dataAccessRoleArn" in p:
            needed.append(
                Permission(
                    "iam:PassRole",
                    p["dataAccessRoleArn"],
                    (("iam:PassedToService", "medical-imaging.amazonaws.com"),),
                )
            )
        return needed
    raise LookupError(f"no IAM mapping for {_PREFIX.get(call.service, call.service)}:{call.operation}")


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _conditions_hold(condition: dict[str, Any], context: dict[str, str | tuple[str, ...]]) -> bool:
    for operator, tests in condition.items():
        for key, expected in tests.items():
            if key not in context:
                if operator.endswith("IfExists"):
                    continue
                return False  # a condition on a key the request does not carry does not match
            actual = context[key]
            if operator == "ForAllValues:StringEquals":
                # Every value the request carries is among those allowed.
                values = actual if isinstance(actual, tuple) else (actual,)
                if not set(values) <= set(_as_list(expected)):
                    return False
                continue
            if isinstance(actual, tuple):
                return False  # a single-valued operator on a multivalued key: not what the template means
            if operator in ("StringEquals", "StringEqualsIfExists") and actual not in _as_list(expected):
                return False
            if operator == "StringLike" and not any(fnmatch.fnmatchcase(actual, e) for e in _as_list(expected)):
                return False
            if operator not in ("StringEquals", "StringEqualsIfExists", "StringLike"):
                return False
    return True


def allows(statements: list[dict[str, Any]], needed: Permission) -> bool:
    context = dict(needed.context)
    for statement in statements:
        if statement.get("Effect") != "Allow":
            continue
        if not any(fnmatch.fnmatchcase(needed.action, a) for a in _as_list(statement["Action"])):
            continue
        if not any(fnmatch.fnmatchcase(needed.resource, r) for r in _as_list(statement["Resource"])):
            continue
        if _conditions_hold(statement.get("Condition", {}), context):
            return True
    return False


def denied(statements: list[dict[str, Any]], calls: list[ApiCall]) -> list[str]:
    """Each call (with the permission it lacks) that ``statements`` would not allow."""
    missing = []
    for call in calls:
        for needed in permissions(call):
            if not allows(statements, needed):
                missing.append(f"{call}: needs {needed}")
    return sorted(set(missing))
