"""What a million 512 KiB instances cost at list prices in us-east-1 (issue 26; docs/deployment.md "What it costs").

    .venv/bin/python bench/cost_model.py [--scale PIPELINE_SCALE_JSON] [--landing S3_RESULTS_JSON]

Counts come from measurements, not guesses: the per-instance counts of the pipeline's scale run (state transitions,
Lambda invocations and their modelled durations, DynamoDB writes, S3 requests, HealthImaging calls:
bench/pipeline_scale.py), the SCP's landing rate into S3 (docs/benchmarks.md section 9's S3 run through a proxy
adding an in-region PUT's 20 ms), and the bytes the SCP logs (MEASURED_LOG_BYTES, below). The stack's sizes are the
template's defaults, read from its parameter and function tables. What is estimated rather than measured says so in
its row. Prices are in PRICES with the page each was read from: change them there and run again; the output is the
table pasted into the guide. Free tiers are left out.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT / "container", ROOT):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from dicom_store_contract import metrics, tables  # noqa: E402

from template_gen.parameters import BY_NAME  # noqa: E402
from template_gen.pipeline import BY_NAME as FUNCTIONS_BY_NAME  # noqa: E402

INSTANCES = 1_000_000
INSTANCE_BYTES = 512 * 1024
GIB = 2**30  # S3, CloudWatch Logs and HealthImaging bill binary gigabytes
HOURS_PER_MONTH = 730
DAYS_PER_MONTH = HOURS_PER_MONTH / 24
LOOKED_UP = "2026-12-07"


@dataclass(frozen=True)
class Price:
    value: float
    unit: str
    source: str  # the page it was read from (stored copies, searched on LOOKED_UP)
    per: int = 1  # the price is for this many units (1,000 requests, a million)


# us-east-1 list prices, on-demand, x86. AWS's own pricing pages render most figures from a price list the stored
# copies do not hold, so several come from pages quoting them; each row names its page.
PRICES: dict[str, Price] = {
    "fargate_vcpu_hour": Price(
        0.04048, "per vCPU-hour", "https://www.factualminds.com/blog/amazon-fargate-ecs-task-pricing-2026/"
    ),
    "fargate_gb_hour": Price(
        0.004445, "per GB-hour", "https://www.factualminds.com/blog/amazon-fargate-ecs-task-pricing-2026/"
    ),
    "fargate_storage_gb_hour": Price(
        0.000111, "per GB-hour of ephemeral storage above 20 GB", "https://www.vantage.sh/blog/fargate-pricing"
    ),
    "nlb_hour": Price(0.0225, "per load balancer-hour", "https://awsnegotiations.com/blog/elastic-load-balancer-cost/"),
    "nlcu_hour": Price(
        0.006,
        "per NLCU-hour (an NLCU: 1 GB processed an hour, TCP)",
        "https://awsnegotiations.com/blog/elastic-load-balancer-cost/",
    ),
    "s3_put_1000": Price(
        0.005, "per 1,000 PUT, COPY, POST, LIST", "https://c3x.dev/blog/s3-request-fees-explained", 1_000
    ),
    "s3_get_1000": Price(0.0004, "per 1,000 GET and other", "https://c3x.dev/blog/s3-request-fees-explained", 1_000),
    "s3_gb_month": Price(
        0.023,
        "per GB-month, S3 Standard, first 50 TB",
        "https://gist.github.com/EverettBerry/a37438006529a55f42da6fdbc44a505c",
    ),
    "lambda_million_requests": Price(
        0.20,
        "per million requests",
        "https://docs.aws.amazon.com/whitepapers/latest/how-aws-pricing-works/lambda.html",
        1_000_000,
    ),
    "lambda_gb_second": Price(
        0.00001667, "per GB-second", "https://docs.aws.amazon.com/whitepapers/latest/how-aws-pricing-works/lambda.html"
    ),
    "sfn_1000_transitions": Price(
        0.025, "per 1,000 state transitions (Standard)", "https://aws.amazon.com/step-functions/pricing/", 1_000
    ),
    "dynamodb_million_writes": Price(
        0.625,
        "per million write request units, on demand",
        "https://airbyte.com/data-engineering-resources/dynamodb-pricing",
        1_000_000,
    ),
    "logs_ingest_gb": Price(
        0.50,
        "per GB ingested (Standard log class)",
        "https://hivebook.wiki/wiki/cloudwatch-logs-cost-never-expire-retention-and-cardinality-blowups",
    ),
    "logs_store_gb_month": Price(
        0.03,
        "per GB-month stored",
        "https://hivebook.wiki/wiki/cloudwatch-logs-cost-never-expire-retention-and-cardinality-blowups",
    ),
    "custom_metric_month": Price(0.30, "per custom metric-month", "https://signoz.io/guides/cloudwatch-pricing"),
    "dashboard_month": Price(
        3.00,
        "per dashboard-month",
        "https://www.factualminds.com/blog/amazon-cloudwatch-pricing-metrics-logs-alarms-dashboards/",
    ),
    "ahi_frequent_gb_month": Price(
        0.105,
        "per GB-month, Frequent Access tier (all imports start there, 30 days minimum)",
        "https://aws.amazon.com/healthimaging/pricing/ (its example; transcribed in "
        "https://raw.githubusercontent.com/api-evangelist/amazon-healthimaging/refs/heads/main/plans/"
        "amazon-healthimaging-plans-pricing.yml)",
    ),
    "ahi_archive_gb_month": Price(
        0.006,
        "per GB-month, Archive Instant Access tier (after 30 days untouched)",
        "as ahi_frequent_gb_month",
    ),
    "ahi_1000_api_calls": Price(0.005, "per 1,000 API calls", "as ahi_frequent_gb_month", 1_000),
    "ahi_import": Price(0.0, "imports", "https://www.aws.amazon.com/healthimaging/pricing: imports are always free"),
}

# Measured with the SCP as shipped (INFO, WORKERS=1, local store, AUDIT_FILE) and DCMTK storescu on 2026-12-07:
# two associations of 100 instances each, then a 130 s run with one (docs/deployment.md says how to re-measure).
MEASURED_LOG_BYTES = {
    "scp_per_association": 420,  # the "association ended" line; the SCP logs no line per instance
    "audit_per_association": 1_792,  # PS3.15 messages of one association of one study (begin, instances stored)
    "scp_per_idle_minute": 997,  # one EMF metrics record per receiving process and minute
}
# Not measured (the scale run silences the functions' loggers): Lambda's START, END and REPORT lines plus one
# Powertools line and one EMF record a function writes per invocation; Step Functions' execution log (level ALL,
# without execution data) writes about two events per transition.
ESTIMATED_LOG_BYTES = {"lambda_per_invocation": 1_200, "sfn_per_transition": 700}
# Not measured: what HealthImaging does with the landing copy and the results bucket (it reads each object once,
# writes a job's output manifest and three ndjson files, ~250 bytes of them per instance).
HEALTHIMAGING_GETS_PER_INSTANCE = 1.0
HEALTHIMAGING_OUTPUT_OBJECTS_PER_JOB = 4
RESULT_BYTES_PER_INSTANCE = 250


@dataclass(frozen=True)
class Line:
    service: str
    item: str
    quantity: float
    unit: str
    price: str  # a PRICES key
    basis: str  # measured, modelled, estimated, template default

    @property
    def cost(self) -> float:
        price = PRICES[self.price]
        return self.quantity * price.value / price.per


def default(name: str) -> float:
    value = BY_NAME[name].default
    assert value is not None, name
    return float(value)


@dataclass(frozen=True)
class Stack:
    """The template's defaults that price a deployment."""

    tasks: float
    task_vcpu: float
    task_memory_gb: float
    task_storage_gb: float
    landing_retention_days: float
    results_retention_days: float
    log_retention_days: float
    audit_retention_days: float
    function_memory_gb: Mapping[str, float]

    @classmethod
    def from_template(cls) -> Stack:
        return cls(
            tasks=default("TaskDesiredCount"),
            task_vcpu=default("TaskCPU") / 1024,
            task_memory_gb=default("TaskMemoryLimit") / 1024,
            task_storage_gb=default("TaskEphemeralStorageGiB"),
            landing_retention_days=default("DICOMObjectRetentionDays"),
            results_retention_days=default("ImportResultsRetentionDays"),
            log_retention_days=default("LogRetentionDays"),
            audit_retention_days=default("AuditLogRetentionDays"),
            function_memory_gb={name: fn.memory / 1024 for name, fn in FUNCTIONS_BY_NAME.items()},
        )


def per_million(scale: Mapping[str, Any], landing_rate: float, stack: Stack) -> list[Line]:
    """Every charge a million instances add, from the scale run's report and the landing rate (instances/s)."""
    n = INSTANCES
    each = scale["perInstance"]
    per_batch = 1 / scale["instancesPerBatch"]
    task_hours = n / landing_rate / 3600  # each task lands at the landing rate
    hours = task_hours / stack.tasks  # the time the minimum of tasks takes to land them
    gigabytes = n * INSTANCE_BYTES / GIB
    months = stack.landing_retention_days / DAYS_PER_MONTH
    lines = [
        *fargate(stack, task_hours, " while landing", "measured rate, template default size"),
        Line("NLB", "load balancer-hours while landing", hours, "h", "nlb_hour", "measured rate"),
        Line(
            "NLB",
            "NLCU-hours (bytes processed)",
            n * INSTANCE_BYTES / 1e9,
            "NLCU-h",
            "nlcu_hour",
            "instance bytes (protocol overhead left out)",
        ),
        Line(
            "S3",
            "PutObject by the SCP (instance + manifest)",
            n * (1 + per_batch),
            "requests",
            "s3_put_1000",
            "one per instance, one per batch",
        ),
        Line(
            "S3",
            "ListObjectsV2 by the functions",
            n * each["s3Requests"].get("ListObjectsV2", 0),
            "requests",
            "s3_put_1000",
            "measured",
        ),
        Line(
            "S3",
            "GetObject by the functions",
            n * each["s3Requests"].get("GetObject", 0),
            "requests",
            "s3_get_1000",
            "measured",
        ),
        Line(
            "S3",
            "GetObject by HealthImaging's import",
            n * HEALTHIMAGING_GETS_PER_INSTANCE,
            "requests",
            "s3_get_1000",
            "estimated",
        ),
        Line(
            "S3",
            "job output written by HealthImaging",
            n * per_batch * HEALTHIMAGING_OUTPUT_OBJECTS_PER_JOB,
            "requests",
            "s3_put_1000",
            "estimated",
        ),
        Line(
            "S3",
            f"landing copy for {stack.landing_retention_days:g} days",
            gigabytes * months,
            "GB-month",
            "s3_gb_month",
            "template default retention",
        ),
        Line(
            "S3",
            f"import results for {stack.results_retention_days:g} days",
            n * RESULT_BYTES_PER_INSTANCE / GIB * stack.results_retention_days / DAYS_PER_MONTH,
            "GB-month",
            "s3_gb_month",
            "estimated size",
        ),
        Line("Lambda", "invocations", n * each["lambdaInvocations"], "requests", "lambda_million_requests", "measured"),
        Line(
            "Lambda",
            "GB-seconds at the functions' memory sizes",
            n
            * sum(
                seconds * stack.function_memory_gb[name] for name, seconds in each["lambdaSecondsByFunction"].items()
            ),
            "GB-s",
            "lambda_gb_second",
            "modelled durations",
        ),
        Line(
            "Step Functions",
            "state transitions",
            n * each["stateTransitions"],
            "transitions",
            "sfn_1000_transitions",
            "measured",
        ),
        Line(
            "DynamoDB",
            "write request units, base tables and indexes",
            n * write_units(scale),
            "WRU",
            "dynamodb_million_writes",
            "measured (items under 1 KB)",
        ),
        Line(
            "CloudWatch",
            "logs ingested: the SCP",
            n * per_batch * MEASURED_LOG_BYTES["scp_per_association"] / GIB,
            "GB",
            "logs_ingest_gb",
            "measured",
        ),
        Line(
            "CloudWatch",
            "logs ingested: the audit log group",
            n * per_batch * MEASURED_LOG_BYTES["audit_per_association"] / GIB,
            "GB",
            "logs_ingest_gb",
            "measured",
        ),
        Line(
            "CloudWatch",
            "logs ingested: the functions",
            n * each["lambdaInvocations"] * ESTIMATED_LOG_BYTES["lambda_per_invocation"] / GIB,
            "GB",
            "logs_ingest_gb",
            "estimated bytes, measured invocations",
        ),
        Line(
            "CloudWatch",
            "logs ingested: the workflow",
            n * each["stateTransitions"] * ESTIMATED_LOG_BYTES["sfn_per_transition"] / GIB,
            "GB",
            "logs_ingest_gb",
            "estimated bytes, measured transitions",
        ),
    ]
    logs = sum(line.quantity for line in lines if line.item.startswith("logs ingested") and "audit" not in line.item)
    audit = n * per_batch * MEASURED_LOG_BYTES["audit_per_association"] / GIB
    lines += [
        Line(
            "CloudWatch",
            f"logs stored for {stack.log_retention_days:g} days (uncompressed)",
            logs * stack.log_retention_days / DAYS_PER_MONTH,
            "GB-month",
            "logs_store_gb_month",
            "template default",
        ),
        Line(
            "CloudWatch",
            f"audit log stored for {stack.audit_retention_days:g} days (uncompressed)",
            audit * stack.audit_retention_days / DAYS_PER_MONTH,
            "GB-month",
            "logs_store_gb_month",
            "template default",
        ),
        Line("HealthImaging", "imports", n, "instances", "ahi_import", "list price"),
        Line(
            "HealthImaging",
            "storage, first 30 days (Frequent Access)",
            gigabytes,
            "GB-month",
            "ahi_frequent_gb_month",
            "stored size = received size (lossless transcoding may shrink it)",
        ),
        Line(
            "HealthImaging",
            "StartDICOMImportJob + GetDICOMImportJob",
            n * sum(each["healthImagingCalls"].values()),
            "calls",
            "ahi_1000_api_calls",
            "measured",
        ),
    ]
    return lines


def write_units(scale: Mapping[str, Any]) -> float:
    """Write request units per instance: each base-table write once, and once more in every index of its table
    (the indexes project every attribute); a write refused by its condition still costs its unit."""
    by_table = scale["perInstance"]["dynamodbWritesByTable"]
    indexes = {"instance table": len(tables.INSTANCE_INDEXES), "job table": len(tables.JOB_INDEXES)}
    units = sum(count * (1 + indexes[name.rsplit(" ", 1)[0]]) for name, count in by_table.items())
    return units + scale["totals"].get("dynamodbConditionalFailures", 0) / scale["instances"]


def fargate(stack: Stack, task_hours: float, when: str, basis: str) -> list[Line]:
    """The tasks' vCPU, memory and ephemeral storage above the 20 GB Fargate includes, for ``task_hours``;
    ``when`` ends the first two lines' labels."""
    return [
        Line("Fargate", f"vCPU-hours{when}", task_hours * stack.task_vcpu, "vCPU-h", "fargate_vcpu_hour", basis),
        Line("Fargate", f"GB-hours{when}", task_hours * stack.task_memory_gb, "GB-h", "fargate_gb_hour", basis),
        Line(
            "Fargate",
            "ephemeral storage above 20 GB",
            task_hours * max(0.0, stack.task_storage_gb - 20),
            "GB-h",
            "fargate_storage_gb_hour",
            "template default",
        ),
    ]


def per_month(stack: Stack) -> list[Line]:
    """What the stack costs for being there a month, whether or not anything is sent."""
    task_hours = HOURS_PER_MONTH * stack.tasks
    custom_metrics = sum(isinstance(v, metrics.Metric | metrics.FunctionMetric) for v in vars(metrics).values())
    idle_logs = MEASURED_LOG_BYTES["scp_per_idle_minute"] * 60 * HOURS_PER_MONTH * stack.tasks * stack.task_vcpu / GIB
    return [
        *fargate(stack, task_hours, ", minimum tasks", "template default"),
        Line("NLB", "load balancer-hours", HOURS_PER_MONTH, "h", "nlb_hour", "one load balancer"),
        Line(
            "CloudWatch",
            "custom metrics (one service dimension; reasons add more)",
            custom_metrics,
            "metrics",
            "custom_metric_month",
            "dicom_store_contract.metrics",
        ),
        Line("CloudWatch", "dashboard", 1, "dashboard", "dashboard_month", "the stack's one dashboard"),
        Line("CloudWatch", "the SCP's metric records while idle", idle_logs, "GB", "logs_ingest_gb", "measured"),
    ]


def per_month_kept(stack: Stack) -> list[Line]:
    """What a million instances cost for each further month they stay, once the landing copy has expired."""
    gigabytes = INSTANCES * INSTANCE_BYTES / GIB
    return [
        Line(
            "HealthImaging",
            "storage, untouched for 30 days (Archive Instant Access)",
            gigabytes,
            "GB-month",
            "ahi_archive_gb_month",
            "stored size = received size",
        ),
        Line(
            "HealthImaging",
            "storage, read in the last 30 days (Frequent Access)",
            gigabytes,
            "GB-month",
            "ahi_frequent_gb_month",
            "stored size = received size",
        ),
    ]


def landing_rate(results: Mapping[str, Any], associations: int, receiver: str) -> float:
    rows = [row for rows in results.values() for row in rows]
    match = [r for r in rows if r["associations"] == associations and r["receiver"] == receiver]
    if not match:
        raise SystemExit(f"no row for {receiver!r} at {associations} associations")
    return float(match[0]["instances_per_s"])


def _money(value: float) -> str:
    return f"{value:,.2f}" if value >= 0.01 or value == 0 else f"{value:.4f}"


def _quantity(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.2f}"


def _table(lines: list[Line]) -> list[str]:
    out = ["| service | what | quantity | price (us-east-1) | USD | basis |", "|---|---|---|---|---|---|"]
    for line in lines:
        price = PRICES[line.price]
        out.append(
            f"| {line.service} | {line.item} | {_quantity(line.quantity)} {line.unit} | {price.value:g} {price.unit} "
            f"| {_money(line.cost)} | {line.basis} |"
        )
    return out


def _shares(lines: list[Line]) -> list[str]:
    total = sum(line.cost for line in lines)
    services: dict[str, float] = {}
    for line in lines:
        services[line.service] = services.get(line.service, 0.0) + line.cost
    out = ["| service | USD | share |", "|---|---|---|"]
    for service, cost in sorted(services.items(), key=lambda item: -item[1]):
        out.append(f"| {service} | {_money(cost)} | {cost / total:.1%} |")
    out.append(f"| **total** | **{_money(total)}** | |")
    return out


def render(scale: Mapping[str, Any], rate: float, stack: Stack) -> str:
    million = per_million(scale, rate, stack)
    month = per_month(stack)
    hours = INSTANCES / rate / 3600
    text = [
        f"Per million 512 KiB instances ({INSTANCES * INSTANCE_BYTES / GIB:,.1f} GiB), landed by "
        f"{stack.tasks:g} task of {stack.task_vcpu:g} vCPU and {stack.task_memory_gb:g} GB at {rate:.1f} "
        f"instances/s ({hours:.2f} h), {scale['instancesPerBatch']} instances a batch:",
        "",
        *_shares(million),
        "",
        *_table(million),
        "",
        "Each further month a million instances stay in HealthImaging (one row or the other, per image set):",
        "",
        *_table(per_month_kept(stack)),
        "",
        "Per month of running, whatever is sent (the template's minimum of tasks):",
        "",
        *_shares(month),
        "",
        *_table(month),
        "",
        f"Prices looked up {LOOKED_UP}:",
        "",
        *(f"- `{key}`: {price.value:g} {price.unit}: {price.source}" for key, price in PRICES.items()),
    ]
    return "\n".join(text) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=Path, default=ROOT / "bench" / "pipeline-scale.json")
    parser.add_argument("--landing", type=Path, default=ROOT / "bench" / "results-engine-s3-proxy.json")
    parser.add_argument("--associations", type=int, default=4)
    parser.add_argument("--receiver", default="this SCP into S3 (WORKERS=1)")
    options = parser.parse_args(argv)
    scale = json.loads(options.scale.read_text())
    rate = landing_rate(json.loads(options.landing.read_text()), options.associations, options.receiver)
    sys.stdout.write(render(scale, rate, Stack.from_template()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
