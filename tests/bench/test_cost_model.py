"""bench/cost_model.py: its arithmetic on a small scale report, and the guide holds what it prints today."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cost_model() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cost_model", ROOT / "bench" / "cost_model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["cost_model"] = module  # dataclasses resolve their module's annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def small_report() -> dict[str, Any]:
    """What a scale run of 4 batches of 10 instances could report (numbers chosen to check the sums)."""
    return {
        "instances": 40,
        "instancesPerBatch": 10,
        "totals": {"dynamodbConditionalFailures": 4},
        "perInstance": {
            "stateTransitions": 2.0,
            "lambdaInvocations": 0.5,
            "lambdaSecondsByFunction": {"TriggerImport": 0.1, "StartImportJob": 0.2},
            "dynamodbWritesByTable": {"instance table PutItem": 1.0, "job table PutItem": 0.1},
            "s3Requests": {"GetObject": 0.3, "ListObjectsV2": 0.1},
            "healthImagingCalls": {"StartDICOMImportJob": 0.1, "GetDICOMImportJob": 0.2},
        },
    }


def stack(cost_model: ModuleType, **changes: Any) -> Any:
    values = dict(
        tasks=1,
        task_vcpu=1.0,
        task_memory_gb=2.0,
        task_storage_gb=50,
        landing_retention_days=30,
        results_retention_days=365,
        log_retention_days=30,
        audit_retention_days=365,
        function_memory_gb={"TriggerImport": 0.5, "StartImportJob": 0.25},
    )
    return cost_model.Stack(**{**values, **changes})


def line(lines: list[Any], service: str, starts: str) -> Any:
    (found,) = [item for item in lines if item.service == service and item.item.startswith(starts)]
    return found


def test_each_charge_is_the_count_times_its_price(cost_model: ModuleType) -> None:
    prices = cost_model.PRICES
    lines = cost_model.per_million(small_report(), 100.0, stack(cost_model))
    million = 1_000_000

    transitions = line(lines, "Step Functions", "state transitions")
    assert transitions.quantity == pytest.approx(2 * million)
    assert transitions.cost == pytest.approx(2 * million * prices["sfn_1000_transitions"].value / 1000)

    invocations = line(lines, "Lambda", "invocations")
    assert invocations.cost == pytest.approx(0.5 * prices["lambda_million_requests"].value)
    gb_seconds = line(lines, "Lambda", "GB-seconds")
    assert gb_seconds.quantity == pytest.approx(million * (0.1 * 0.5 + 0.2 * 0.25))

    # The instance table has three indexes, the job table one; the 4 refused writes of 40 instances cost a unit each.
    writes = line(lines, "DynamoDB", "write request units")
    assert writes.quantity == pytest.approx(million * (1.0 * 4 + 0.1 * 2 + 4 / 40))
    assert writes.cost == pytest.approx(writes.quantity * prices["dynamodb_million_writes"].value / million)

    # One PutObject per instance and one manifest per batch of 10.
    assert line(lines, "S3", "PutObject by the SCP").quantity == pytest.approx(million * 1.1)
    assert line(lines, "S3", "GetObject by the functions").quantity == pytest.approx(0.3 * million)

    # A million at 100 instances/s on one task: 2.78 hours of 1 vCPU and 2 GB.
    hours = million / 100 / 3600
    assert line(lines, "Fargate", "vCPU-hours").cost == pytest.approx(hours * prices["fargate_vcpu_hour"].value)
    assert line(lines, "Fargate", "GB-hours").cost == pytest.approx(hours * 2 * prices["fargate_gb_hour"].value)
    assert line(lines, "Fargate", "ephemeral").quantity == pytest.approx(hours * 30)
    assert line(lines, "NLB", "load balancer-hours").quantity == pytest.approx(hours)

    gib = million * 512 * 1024 / 2**30
    assert line(lines, "S3", "landing copy").quantity == pytest.approx(gib * 30 / (730 / 24))
    assert line(lines, "HealthImaging", "storage").cost == pytest.approx(gib * prices["ahi_frequent_gb_month"].value)
    assert line(lines, "HealthImaging", "StartDICOMImportJob").quantity == pytest.approx(0.3 * million)


def test_more_tasks_land_sooner_for_the_same_task_hours(cost_model: ModuleType) -> None:
    one = cost_model.per_million(small_report(), 100.0, stack(cost_model))
    three = cost_model.per_million(small_report(), 100.0, stack(cost_model, tasks=3))
    assert line(three, "Fargate", "vCPU-hours").quantity == pytest.approx(line(one, "Fargate", "vCPU-hours").quantity)
    assert line(three, "NLB", "load balancer-hours").quantity == pytest.approx(
        line(one, "NLB", "load balancer-hours").quantity / 3
    )


def test_shorter_retention_costs_less_storage(cost_model: ModuleType) -> None:
    long = cost_model.per_million(small_report(), 100.0, stack(cost_model))
    short = cost_model.per_million(small_report(), 100.0, stack(cost_model, landing_retention_days=7))
    assert line(short, "S3", "landing copy").cost == pytest.approx(line(long, "S3", "landing copy").cost * 7 / 30)


def test_the_stack_is_the_templates_defaults(cost_model: ModuleType) -> None:
    from template_gen.parameters import BY_NAME

    defaults = cost_model.Stack.from_template()
    assert defaults.task_vcpu == int(str(BY_NAME["TaskCPU"].default)) / 1024
    assert defaults.landing_retention_days == int(str(BY_NAME["DICOMObjectRetentionDays"].default))
    assert defaults.function_memory_gb["CheckStatus"] == 0.5


def test_the_guide_holds_what_the_script_prints(cost_model: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    assert cost_model.main([]) == 0
    printed = capsys.readouterr().out
    guide = (ROOT / "docs" / "deployment.md").read_text()
    block = re.search(r"<!-- cost_model -->\n(.*?)<!-- end cost_model -->", guide, re.S)
    assert block is not None, "docs/deployment.md has no cost_model block"
    assert block.group(1) == printed, "re-run bench/cost_model.py and paste its output into docs/deployment.md"
