"""IngestMode: in stow mode the task stores into its own data store by StoreDICOM, and may write the stowed/ copy;
in import mode it can do neither."""

from __future__ import annotations

from typing import Any

from dicom_store_contract import ingest, refusals
from support.cfn import Deployment


def _stack(template: dict[str, Any], **overrides: str) -> Deployment:
    return Deployment(template, {"PeerCIDR1": "192.0.2.0/24", **overrides})


def _granted(stack: Deployment, action: str, role: str = "ScpTaskRole") -> list[str]:
    resources: list[str] = []
    for statement in stack.role_statements(role):
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        if action in actions:
            found = statement["Resource"]
            resources += found if isinstance(found, list) else [found]
    return resources


def test_stow_mode_grants_store_dicom_on_the_stacks_data_store_only(template):
    stow = _stack(template, IngestMode="stow", ExistingDatastoreID="0123456789abcdef0123456789abcdef")

    [datastore] = _granted(stow, "medical-imaging:StoreDICOM")

    assert datastore.endswith(":datastore/0123456789abcdef0123456789abcdef")
    assert _granted(stow, "medical-imaging:StoreDICOMStudy") == []
    env = stow.container_environment("ScpTaskDefinition")
    assert env["INGEST_MODE"] == "stow"
    assert env["AHI_STOW_URL"].endswith("/datastore/0123456789abcdef0123456789abcdef")
    assert env["AHI_STOW_URL"].startswith("https://dicom-medical-imaging.")
    assert any(arn.endswith("stowed/*") for arn in _granted(stow, "s3:PutObject"))


def test_import_mode_grants_no_store_dicom_and_no_stowed_prefix(template):
    default = _stack(template)

    assert _granted(default, "medical-imaging:StoreDICOM") == []
    assert not any(arn.endswith("stowed/*") for arn in _granted(default, "s3:PutObject"))
    assert default.container_environment("ScpTaskDefinition")["INGEST_MODE"] == "import"


def _put_conditions(stack: Deployment) -> list[list[str]]:
    """The attribute lists each PutItem statement on the instance table allows."""
    found = []
    for statement in stack.role_statements("ScpTaskRole"):
        if statement["Action"] == ["dynamodb:PutItem"]:
            found.append(statement["Condition"]["ForAllValues:StringEquals"]["dynamodb:Attributes"])
    return found


def test_stow_mode_may_record_an_outcomes_attributes_and_import_mode_may_not(template):
    stow = _stack(template, IngestMode="stow", ExistingDatastoreID="0123456789abcdef0123456789abcdef")

    assert sorted(_put_conditions(stow)) == sorted([list(refusals.ITEM_ATTRIBUTES), list(ingest.STOW_ITEM_ATTRIBUTES)])
    assert _put_conditions(_stack(template)) == [list(refusals.ITEM_ATTRIBUTES)]
    # An outcome names its image set, never an import job: the SCP cannot forge the pipeline's items.
    assert "jobId" not in ingest.STOW_ITEM_ATTRIBUTES and "imageSetId" in ingest.STOW_ITEM_ATTRIBUTES


def test_stow_batched_mode_grants_store_dicom_to_the_store_step_only(template):
    batched = _stack(template, IngestMode="stow-batched", ExistingDatastoreID="0123456789abcdef0123456789abcdef")
    default = _stack(template, ExistingDatastoreID="0123456789abcdef0123456789abcdef")

    [datastore] = _granted(batched, "medical-imaging:StoreDICOM", "StoreBatchRole")
    assert datastore.endswith(":datastore/0123456789abcdef0123456789abcdef")
    # It reads the batches' objects (incoming/), nothing else of the bucket's but the manifests every step reads.
    assert sorted(arn.split("/")[-2] for arn in _granted(batched, "s3:GetObject", "StoreBatchRole")) == [
        "incoming",
        "manifests",
    ]
    # The SCP lands in S3 as in import mode: the task stores nothing in HealthImaging itself.
    assert _granted(batched, "medical-imaging:StoreDICOM") == []
    assert batched.container_environment("ScpTaskDefinition")["INGEST_MODE"] == "stow-batched"
    env = batched.lambda_environment("StoreBatchFunction")
    assert env["INGEST_MODE"] == "stow-batched"
    assert (
        env["AHI_STOW_URL"]
        == "https://dicom-medical-imaging.us-east-1.amazonaws.com/datastore/" + "0123456789abcdef0123456789abcdef"
    )
    # Import mode: the step's role can neither read the objects nor store them.
    assert _granted(default, "medical-imaging:StoreDICOM", "StoreBatchRole") == []
    assert [arn for arn in _granted(default, "s3:GetObject", "StoreBatchRole") if "incoming" in arn] == []


def test_stow_batched_mode_lets_the_store_step_list_the_batches_prefix_only(template):
    # S3 answers GetObject of a missing key with 403 to a role that may not list: StoreBatch lists the key to tell
    # a missing object (FAILED alone) from a denial (retried), and may list nothing outside incoming/.
    batched = _stack(template, IngestMode="stow-batched", ExistingDatastoreID="0123456789abcdef0123456789abcdef")
    default = _stack(template, ExistingDatastoreID="0123456789abcdef0123456789abcdef")

    lists = [s for s in batched.role_statements("StoreBatchRole") if "s3:ListBucket" in s["Action"]]
    assert len(lists) == 1
    [listing] = lists
    [bucket] = listing["Resource"] if isinstance(listing["Resource"], list) else [listing["Resource"]]
    assert bucket.startswith("arn:aws:s3:::") and "/" not in bucket
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["incoming/*"]}}
    assert [s for s in default.role_statements("StoreBatchRole") if "s3:ListBucket" in s["Action"]] == []


def test_the_store_steps_listing_of_an_objects_key_is_allowed_and_a_404_would_not_be(template):
    from support.iam import ApiCall, denied

    batched = Deployment(
        template,
        {"PeerCIDR1": "192.0.2.0/24", "IngestMode": "stow-batched", "DICOMPrefix": "site-a/"},
    )
    statements = batched.role_statements("StoreBatchRole")
    bucket = batched.output("DICOMBucketName")
    key = "site-a/incoming/20261123T190501Z-0f6c1d2e3a4b4c5d8e9f00112233aabb/1.2/1.3/1.4.dcm"
    # What functions.store_batch asks when GetObject answers 403.
    listing = ApiCall("s3", "ListObjectsV2", {"Bucket": bucket, "Prefix": key, "MaxKeys": 1})
    assert denied(statements, [listing]) == []
    assert denied(statements, [ApiCall("s3", "ListObjectsV2", {"Bucket": bucket, "Prefix": "site-a/manifests/"})])
    # S3's 404 for a missing key needs s3:ListBucket without a prefix: the role still hears 403 there.
    assert denied(statements, [ApiCall("s3", "GetObject", {"Bucket": bucket, "Key": key}, status=404)])


KMS_KEY = "arn:aws:kms:us-east-1:111122223333:key/0f6c1d2e-3a4b-4c5d-8e9f-00112233aabb"
# HealthImaging's use of a customer managed key on a caller's write (developer guide, Data encryption).
DATA_STORE_KEY_ACTIONS = {"kms:DescribeKey", "kms:GenerateDataKey", "kms:Decrypt"}


def _key_grants(stack: Deployment, role: str) -> list[tuple[set[str], Any, dict[str, Any]]]:
    """(actions, resources, condition) of each statement of the role that grants use of a KMS key."""
    found = []
    for statement in stack.role_statements(role):
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        if any(str(action).startswith("kms:") for action in actions):
            found.append((set(actions), statement["Resource"], statement.get("Condition", {})))
    return found


def _through_healthimaging(stack: Deployment, role: str) -> list[tuple[set[str], Any, dict[str, Any]]]:
    via = "medical-imaging.us-east-1.amazonaws.com"
    return [g for g in _key_grants(stack, role) if g[2].get("StringEquals", {}).get("kms:ViaService") == via]


def test_a_store_dicom_caller_may_use_the_data_stores_key_through_healthimaging_only_when_a_key_is_given(template):
    store = {"ExistingDatastoreID": "0123456789abcdef0123456789abcdef"}
    for mode, role in (("stow", "ScpTaskRole"), ("stow-batched", "StoreBatchRole")):
        keyed = _stack(template, IngestMode=mode, KmsKeyArn=KMS_KEY, **store)
        # Exactly HealthImaging's use of the key, on the key given, through HealthImaging (kms:ViaService).
        assert _through_healthimaging(keyed, role) == [
            (
                DATA_STORE_KEY_ACTIONS,
                [KMS_KEY],
                {"StringEquals": {"kms:ViaService": "medical-imaging.us-east-1.amazonaws.com"}},
            )
        ], mode
        # No key: no KMS permission at all for the store step (the task keeps none either).
        assert _key_grants(_stack(template, IngestMode=mode, **store), role) == [], mode

    # Not in the other modes: the task stores into HealthImaging only in stow mode, StoreBatch only in stow-batched.
    for mode in ("import", "stow-batched"):
        assert (
            _through_healthimaging(_stack(template, IngestMode=mode, KmsKeyArn=KMS_KEY, **store), "ScpTaskRole") == []
        )
    for mode in ("import", "stow"):
        keyed = _stack(template, IngestMode=mode, KmsKeyArn=KMS_KEY, **store)
        assert _through_healthimaging(keyed, "StoreBatchRole") == []


def test_store_batch_writes_the_audit_log_group_in_stow_batched_mode_only(template):
    batched = _stack(template, IngestMode="stow-batched", ExistingDatastoreID="0123456789abcdef0123456789abcdef")
    default = _stack(template, ExistingDatastoreID="0123456789abcdef0123456789abcdef")

    group = "arn:aws:placeholder:us-east-1:123456789012:AuditLogGroup.Arn"  # as the evaluator renders GetAtt
    assert _granted(batched, "logs:PutLogEvents", "StoreBatchRole").count(group) == 1
    assert _granted(batched, "logs:CreateLogStream", "StoreBatchRole").count(group) == 1
    assert group not in _granted(default, "logs:PutLogEvents", "StoreBatchRole")
    assert (
        batched.lambda_environment("StoreBatchFunction")["AUDIT_LOG_GROUP"]
        == batched.lambda_environment("CheckStatusFunction")["AUDIT_LOG_GROUP"]
    )
