"""Issue 26: batches outnumbering HealthImaging's quotas, through the real functions and the template's workflow.

A smaller run of bench/pipeline_scale.py (docs/benchmarks.md section 13): ap-southeast-2's 20 concurrent jobs, so
that six times as many batches wait for a slot; Lambda concurrency 10; every 7th of each fault. tests/support/
scale.py says what is real (handlers, ASL, DynamoDB, S3) and what is modelled (Lambda, HealthImaging, the clock).
"""

from __future__ import annotations

import pytest
from support.scale import ScaleOptions, run

BATCHES, INSTANCES_PER_BATCH = 120, 5


@pytest.fixture(scope="module")
def report():
    return run(
        ScaleOptions(
            batches=BATCHES,
            instances_per_batch=INSTANCES_PER_BATCH,
            region="ap-southeast-2",
            lose_response_every=7,
            server_error_every=7,
            fail_job_every=7,
            duplicate_event_every=7,
        )
    )


def test_every_instance_ends_final_with_its_reason_and_none_is_stuck(report):
    assert report["instances"] == BATCHES * INSTANCES_PER_BATCH
    assert (report["terminal"], report["stuck"]) == (report["instances"], 0)
    assert set(report["states"]) <= {"IMPORTED", "IMPORTED_WITH_WARNINGS", "FAILED"}
    assert report["executionsStarted"] == BATCHES


def test_only_the_jobs_healthimaging_failed_fail_their_instances(report):
    # Lost responses, 500s and throttling are retried: the only FAILED instances are those of the failed jobs.
    assert report["failedJobs"] > 0
    assert report["states"]["FAILED"] == report["failedJobs"] * INSTANCES_PER_BATCH
    assert report["unexpectedFailures"] == 0
    assert report["failureReasons"] == {"the fake failed this job": report["states"]["FAILED"]}


def test_one_import_job_per_batch_and_never_more_jobs_than_the_quota(report):
    assert report["duplicateJobs"] == 0
    assert report["jobs"] == BATCHES
    assert report["concurrentJobQuota"] == 20
    # The quota was reached (the batches did wait for slots) and never passed.
    assert report["maxConcurrentJobs"] == 20
    assert any(key.startswith("StartImportJob ImportJobSlotsFull") for key in report["retries"])


def test_the_faults_were_injected_and_lambda_throttled(report):
    faults = report["faults"]
    assert faults["responsesLost"].get("StartImportJob") and faults["responsesLost"].get("CheckStatus")
    assert faults["serverErrors"] > 0
    assert faults["duplicateManifestEvents"] == BATCHES // 7
    assert sum(faults["lambdaThrottled"].values()) > 0
    assert report["lambdaPeakConcurrency"] <= report["lambdaConcurrency"] == 10


def test_the_drain_is_measured_against_the_quota_bound(report):
    assert 0 < report["boundSeconds"] <= report["drainSeconds"]
    per_instance = report["perInstance"]
    # Each instance is written at least once when recorded, once when its job starts and once with its outcome.
    assert per_instance["dynamodbWritesByTable"]["instance table PutItem"] >= 1
    assert per_instance["dynamodbWritesByTable"]["instance table UpdateItem"] >= 2
    assert per_instance["stateTransitions"] > 0 and per_instance["lambdaInvocations"] > 0
