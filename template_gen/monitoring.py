"""Monitoring: one dashboard (ingest, storage and import, health), alarms for what needs a person, and the
target tracking on open associations that sits on the SCP's own metric.

Every metric named here comes from dicom_store_contract.metrics (the SCP's EMF metrics and the functions'
Powertools metrics) or is an AWS namespace's; tests/template_gen/test_monitoring.py checks both. Each alarm's
description says what it means and what to check first; docs/deployment.md ("Operations") is generated from
:func:`alarms` and the dashboard body.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from dicom_store_contract import metrics as m
from troposphere import GetAtt, If, NoValue, Ref, Sub, Template, cloudwatch
from troposphere import applicationautoscaling as aas

from template_gen import common as c
from template_gen import parameters as p
from template_gen.pipeline import FUNCTIONS, Function, powertools_service

DASHBOARD = "ScpDashboard"

# The SCP's log lines a person reads first when ingest goes wrong (their "event" field: handlers.py, engine.py,
# negotiation.py).
PROBLEM_EVENTS = ("c-store-failed", "association-rejected", "protocol-abort", "manifest-failed", "start-failed")

# What Sub fills into the dashboard body: ${Name} -> the value.
_SUB_VALUES: dict[str, object] = {
    "Cluster": Ref(c.CLUSTER),
    "ServiceName": GetAtt(c.SERVICE, "Name"),
    "LoadBalancer": GetAtt(c.LOAD_BALANCER, "LoadBalancerFullName"),
    "TargetGroup": GetAtt(c.TARGET_GROUP, "TargetGroupFullName"),
    "DeadLetterQueue": GetAtt(c.DEAD_LETTER_QUEUE, "QueueName"),
    "StateMachine": Ref(c.STATE_MACHINE),
    c.SCP_LOG_GROUP: Ref(c.SCP_LOG_GROUP),
    **{fn.logical_id: Ref(fn.logical_id) for fn in FUNCTIONS},
}
_STACK = "${AWS::StackName}"


def function_service(metric: m.FunctionMetric, module: str = "") -> str:
    """The ``service`` dimension Powertools gives a function's metrics: its POWERTOOLS_SERVICE_NAME (in Sub's
    syntax: the stack's name, then the function's service name). ``module``: which of the functions publishing it
    (default: its first, ``metric.module``)."""
    module = module or metric.module
    if module not in metric.modules:
        raise ValueError(f"functions/{module}.py does not publish {metric.name}")
    return powertools_service(_function_named(module))


def _function_named(module: str) -> Function:
    """The function whose handler is in functions/<module>.py."""
    [fn] = [fn for fn in FUNCTIONS if fn.handler.startswith(f"functions.{module}.")]
    return fn


# -- metric rows of the dashboard's widgets (CloudWatch's [namespace, name, dim, value, ..., {options}]) ---------


def scp(metric: m.Metric, stat: str = "Sum", **options: Any) -> list[Any]:
    extra = {k: v for k, v in options.items() if k not in (m.REASON, m.STATUS_FAMILY)}
    dimensions = [m.SERVICE, _STACK]
    for name in (m.REASON, m.STATUS_FAMILY):
        if name in options:
            dimensions += [name, options[name]]
    return [m.NAMESPACE, metric.name, *dimensions, {"stat": stat, **extra}]


def function(metric: m.FunctionMetric, module: str = "", **options: Any) -> list[Any]:
    return [m.NAMESPACE, metric.name, m.SERVICE, function_service(metric, module), {"stat": "Sum", **options}]


def audit_messages_lost() -> list[list[Any]]:
    """Audit messages that never reached a destination: the SCP's dropped (a destination's queue full while it was
    down) and each ingest step's not written (PutLogEvents given up). Each one is a gap in the audit trail."""
    return [
        scp(m.AUDIT_MESSAGES_DROPPED, label="dropped by the SCP (queue full)"),
        *(
            function(m.AUDIT_MESSAGES_NOT_WRITTEN, module, label=f"not written: {_function_named(module).name}")
            for module in m.AUDIT_MESSAGES_NOT_WRITTEN.modules
        ),
    ]


def aws(namespace: str, name: str, dimensions: dict[str, str], stat: str = "Sum", **options: Any) -> list[Any]:
    flat = [part for pair in dimensions.items() for part in pair]
    return [namespace, name, *flat, {"stat": stat, **options}]


def per_second(row: list[Any], ident: str, label: str, scale: str = "") -> list[list[Any]]:
    """A Sum metric shown as a rate: hidden, with an expression dividing it by the period."""
    hidden = [*row[:-1], {**row[-1], "id": ident, "visible": False}]
    return [[{"expression": f"{ident}/PERIOD({ident}){scale}", "label": label, "id": f"{ident}rate"}], hidden]


_ECS = {"ClusterName": "${Cluster}", "ServiceName": "${ServiceName}"}
_NLB = {"LoadBalancer": "${LoadBalancer}", "TargetGroup": "${TargetGroup}"}
_WORKFLOW = {"StateMachineArn": "${StateMachine}"}


@dataclass(frozen=True)
class Widget:
    title: str
    metrics: list[list[Any]]
    stat: str = "Sum"
    period: int = 60
    options: dict[str, Any] = field(default_factory=dict)


def ingest_widgets() -> list[Widget]:
    return [
        Widget(
            "Instances per second (stored, failed)",
            [
                *per_second(scp(m.INSTANCES_STORED), "stored", "stored/s"),
                *per_second(scp(m.STORES_FAILED), "failed", "failed/s"),
            ],
        ),
        Widget("MiB received per second", per_second(scp(m.BYTES_RECEIVED), "bytes", "MiB/s", "/1048576")),
        Widget(
            "Store latency, ms (receive end to durable; S3 upload)",
            [
                scp(m.STORE_LATENCY, "p50", label="store p50"),
                scp(m.STORE_LATENCY, "p99", label="store p99"),
                scp(m.S3_UPLOAD_LATENCY, "p99", label="S3 upload p99"),
            ],
        ),
        Widget(
            # Stow mode's answer waits for HealthImaging: its share of the store latency apart from the sender's.
            "Receive and AWS HealthImaging latency, ms (STOW-RS: stow mode)",
            [
                scp(m.RECEIVE_LATENCY, "p50", label="receive p50"),
                scp(m.RECEIVE_LATENCY, "p99", label="receive p99"),
                scp(m.AHI_STORE_LATENCY, "p50", label="AHI STOW-RS p50"),
                scp(m.AHI_STORE_LATENCY, "p99", label="AHI STOW-RS p99"),
            ],
        ),
        Widget(
            "Active associations (all tasks) and spool",
            [
                scp(m.ACTIVE_ASSOCIATIONS, label="associations"),
                scp(m.SPOOL_BYTES, "Maximum", label="largest spool (bytes)", yAxis="right"),
            ],
        ),
        Widget(
            "Associations accepted, rejected by reason, aborted",
            [
                scp(m.ASSOCIATIONS_ACCEPTED, label="accepted"),
                *(
                    scp(m.ASSOCIATIONS_REJECTED, Reason=reason, label=f"rejected: {reason}")
                    for reason in m.REJECTION_REASONS
                ),
                scp(m.PROTOCOL_ABORTS, label="protocol aborts"),
            ],
        ),
        Widget(
            "Store failures by status family",
            [scp(m.STORES_FAILED, StatusFamily=family, label=family) for family in m.STATUS_FAMILIES],
        ),
    ]


def import_widgets() -> list[Widget]:
    return [
        Widget(
            "Batches: sealed by the SCP, swept, workflows started",
            [
                scp(m.BATCHES_SEALED, label="sealed (SCP)"),
                scp(m.MANIFESTS_FAILED, label="manifest not written (SCP)"),
                function(m.BATCHES_SWEPT, label="sealed by the sweeper"),
                function(m.BATCHES_STARTED, label="workflows started"),
                function(m.MANIFESTS_REJECTED, label="manifests rejected"),
            ],
            period=300,
        ),
        Widget(
            "Import jobs started; import workflows started and succeeded",
            [
                function(m.IMPORT_JOBS_STARTED, label="import jobs started"),
                aws("AWS/States", "ExecutionsStarted", _WORKFLOW, label="workflows started"),
                aws("AWS/States", "ExecutionsSucceeded", _WORKFLOW, label="workflows succeeded"),
            ],
            period=300,
        ),
        Widget(
            "Instances imported / not imported (AWS HealthImaging)",
            [
                function(m.INSTANCES_IMPORTED, label="imported"),
                function(m.INSTANCES_NOT_IMPORTED, label="failed"),
                function(m.INSTANCES_WITH_WARNINGS, label="imported with warnings"),
                function(m.INSTANCES_NOT_PRIMARY, label="in a non-primary image set"),
                function(m.BATCH_INSTANCES_STORED, label="stored by STOW-RS (stow-batched)"),
                function(m.BATCH_INSTANCES_NOT_STORED, label="not stored by STOW-RS (stow-batched)"),
            ],
            period=300,
        ),
        Widget(
            # The batches behind these ended without importing; the operator command finds and restarts them.
            "Workflow failures (start them again: dicom-store-scp redrive --since ...)",
            [
                aws("AWS/States", "ExecutionsFailed", _WORKFLOW, label="workflows failed"),
                aws("AWS/States", "ExecutionsTimedOut", _WORKFLOW, label="workflows timed out"),
                function(m.BATCHES_FAILED, label="batches failed"),
                function(m.BATCHES_TIMED_OUT, label="batches timed out"),
                *(
                    aws("AWS/Lambda", "Errors", {"FunctionName": f"${{{fn.name}Function}}"}, label=f"{fn.name} errors")
                    for fn in FUNCTIONS
                ),
            ],
            period=300,
        ),
    ]


def health_widgets() -> list[Widget]:
    return [
        Widget(
            "SCP tasks running / desired",
            [
                aws("ECS/ContainerInsights", "RunningTaskCount", _ECS, "Average", label="running"),
                aws("ECS/ContainerInsights", "DesiredTaskCount", _ECS, "Average", label="desired"),
            ],
        ),
        Widget(
            "SCP CPU and memory, % (autoscaling target: CPU 50 %)",
            [
                aws("AWS/ECS", "CPUUtilization", _ECS, "Average", label="CPU"),
                aws("AWS/ECS", "MemoryUtilization", _ECS, "Average", label="memory"),
            ],
        ),
        Widget(
            "Load balancer targets",
            [
                aws("AWS/NetworkELB", "HealthyHostCount", _NLB, "Minimum", label="healthy"),
                aws("AWS/NetworkELB", "UnHealthyHostCount", _NLB, "Maximum", label="unhealthy"),
            ],
        ),
        Widget(
            "Dead letters (events no function could process)",
            [aws("AWS/SQS", "ApproximateNumberOfMessagesVisible", {"QueueName": "${DeadLetterQueue}"}, "Maximum")],
            period=300,
        ),
        Widget("Audit messages lost (gaps in the audit trail: should stay 0)", audit_messages_lost(), period=300),
    ]


# Rows of the dashboard, top to bottom: a heading, then its widgets, three to a line.
ROWS: tuple[tuple[str, Any], ...] = (
    ("Ingest: are we receiving, how fast, is anything failing?", ingest_widgets),
    ("Storage and import into AWS HealthImaging", import_widgets),
    ("Health", health_widgets),
)
_WIDTH, _HEIGHT, _PER_LINE = 8, 6, 3


def dashboard_body() -> dict[str, Any]:
    """The dashboard body with ${...} placeholders for Sub (see _SUB_VALUES)."""
    widgets: list[dict[str, Any]] = []
    y = 0
    for heading, build in ROWS:
        widgets.append(
            {"type": "text", "x": 0, "y": y, "width": 24, "height": 1, "properties": {"markdown": f"## {heading}"}}
        )
        y += 1
        for index, widget in enumerate(build()):
            x = (index % _PER_LINE) * _WIDTH
            if index and index % _PER_LINE == 0:
                y += _HEIGHT
            widgets.append(
                {
                    "type": "metric",
                    "x": x,
                    "y": y,
                    "width": _WIDTH,
                    "height": _HEIGHT,
                    "properties": {
                        "title": widget.title,
                        "view": "timeSeries",
                        "region": "${AWS::Region}",
                        "stat": widget.stat,
                        "period": widget.period,
                        "metrics": widget.metrics,
                        **widget.options,
                    },
                }
            )
        y += _HEIGHT
    widgets.append(
        {
            "type": "log",
            "x": 0,
            "y": y,
            "width": 24,
            "height": _HEIGHT,
            "properties": {
                "title": "SCP: latest failures, rejections and aborts (log lines)",
                "region": "${AWS::Region}",
                "view": "table",
                "query": f"SOURCE '${{{c.SCP_LOG_GROUP}}}'"
                " | fields @timestamp, event, peer, callingAE, reason, status, detail"
                f" | filter event in {json.dumps(list(PROBLEM_EVENTS))}"
                " | sort @timestamp desc | limit 50",
            },
        }
    )
    return {"widgets": widgets}


def add_dashboard(template: Template) -> None:
    body = json.dumps(dashboard_body(), separators=(",", ":"))
    template.add_resource(
        cloudwatch.Dashboard(
            DASHBOARD, DashboardName=Sub("${AWS::StackName}-dicom-store-scp"), DashboardBody=Sub(body, **_SUB_VALUES)
        )
    )


# -- alarms --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Alarm:
    logical_id: str
    means: str
    check_first: str
    metric: list[Any]  # a dashboard metric row: namespace, name, dimension pairs, {"stat": ...}
    # More rows: the alarm is then on their sum (metric math over all of them, missing data counted as 0).
    more: tuple[list[Any], ...] = ()
    threshold: float = 1
    comparison: str = "GreaterThanOrEqualToThreshold"
    period: int = 300
    evaluation_periods: int = 1
    # No data means nothing ran (or nothing was sent), which is not a failure.
    missing_data: str = "notBreaching"

    @property
    def description(self) -> str:
        return f"{self.means} Check first: {self.check_first}"


# Minutes of store failures in a row before anyone is woken: a single bad file from a modality is not an incident.
STORE_FAILURE_MINUTES = 5
# Rejected associations in five minutes that make a spike: more than a mistyped AE title retried a few times.
REJECTION_SPIKE = 20


def alarms() -> list[Alarm]:
    workflow = {"StateMachineArn": "${StateMachine}"}
    return [
        Alarm(
            "ScpStoreFailuresAlarm",
            f"The SCP answered C-STORE requests with a failure status in each of the last {STORE_FAILURE_MINUTES}"
            " minutes: senders are retrying or giving up.",
            'the SCP log group: Logs Insights `filter event = "c-store-failed" | stats count() by reason, callingAE`.'
            " OutOfResources (A7xx) means the S3 bucket or its KMS key refused the upload; the other families mean a"
            " sender sends data sets the SCP cannot store (ask that modality's administrator).",
            scp(m.STORES_FAILED),
            period=60,
            evaluation_periods=STORE_FAILURE_MINUTES,
        ),
        Alarm(
            "ScpRejectedAssociationsAlarm",
            f"{REJECTION_SPIKE} or more associations were rejected within five minutes.",
            "the dashboard's rejections by reason. CallingAETitle/CalledAETitle: a modality's AE configuration"
            " changed or the allowed list misses it; PeerAddress: a sender outside PeerCIDR1-3; AssociationLimit:"
            " raise MaximumAssociations or AutoscaleMaxCapacity.",
            scp(m.ASSOCIATIONS_REJECTED),
            threshold=REJECTION_SPIKE,
        ),
        Alarm(
            "InstanceImportFailuresAlarm",
            "AWS HealthImaging failed to import instances that the SCP had stored.",
            "the DicomInstanceTable items in state FAILED (failureReason) and the import job's failure.ndjson in the"
            " import results bucket.",
            function(m.INSTANCES_NOT_IMPORTED),
        ),
        Alarm(
            "ImportWorkflowFailedAlarm",
            "Import workflow executions failed.",
            "the failed execution in the Step Functions console (the failing state's error), then that function's"
            " log group; once the cause is fixed, dicom-store-scp redrive --since <when it began> starts those"
            " batches again.",
            aws("AWS/States", "ExecutionsFailed", workflow),
        ),
        Alarm(
            "ImportWorkflowTimedOutAlarm",
            "Import workflow executions timed out.",
            "the import job's status in AWS HealthImaging (aws medical-imaging get-dicom-import-job); jobs that"
            " regularly run longer than ImportPollSeconds x ImportMaxPolls need those parameters raised;"
            " dicom-store-scp redrive --since <when it began> follows those batches' jobs again.",
            aws("AWS/States", "ExecutionsTimedOut", workflow),
        ),
        *(
            Alarm(
                f"{fn.name}ErrorsAlarm",
                f"The {fn.name} function failed.",
                f"the {fn.name} function's log group (level ERROR) for the exception.",
                aws("AWS/Lambda", "Errors", {"FunctionName": f"${{{fn.name}Function}}"}),
            )
            for fn in FUNCTIONS
        ),
        Alarm(
            "ImportEventDeadLettersAlarm",
            "Manifest or sweep events could not be processed: their batches are not being imported.",
            "the messages in the dead-letter queue (the event) and the TriggerImport/Sweeper log group at that time;"
            " once fixed, dicom-store-scp redrive --since <when it began> starts their batches.",
            aws("AWS/SQS", "ApproximateNumberOfMessagesVisible", {"QueueName": "${DeadLetterQueue}"}, "Maximum"),
        ),
        Alarm(
            "AuditMessagesLostAlarm",
            "Audit messages were lost: the audit trail (the audit log group, the audit repository) misses them, and"
            " nothing sends them again.",
            'the dashboard\'s "Audit messages lost" by source. Dropped by the SCP: the audit repository'
            " (AuditSyslogURL) was unreachable longer than its queue holds (the SCP log group's audit-dropped lines;"
            " its network, certificate, AUDIT_QUEUE_LIMIT). Not written by a function: that function's log group,"
            ' "ingest audit messages not written" (AccessDeniedException: its role or the audit group\'s KMS key;'
            " ThrottlingException: the account's PutLogEvents quota); the batch's outcome is still in the instance"
            " table.",
            audit_messages_lost()[0],
            more=tuple(audit_messages_lost()[1:]),
        ),
        Alarm(
            "NoHealthyScpTaskAlarm",
            "No healthy SCP task is behind the DICOM endpoint: senders cannot connect.",
            "the ECS service's events and stopped tasks (stop reason, exit code 1 or 3 with a start-failed or"
            " workers-failing log line), then the target group's health checks.",
            aws("AWS/NetworkELB", "HealthyHostCount", _NLB, "Minimum"),
            comparison="LessThanThreshold",
        ),
    ]


def _dimension_values(metric: list[Any]) -> list[cloudwatch.MetricDimension]:
    pairs = metric[2:-1]
    return [
        cloudwatch.MetricDimension(Name=name, Value=_resolve(value))
        for name, value in zip(pairs[::2], pairs[1::2], strict=True)
    ]


def _resolve(value: str) -> object:
    """A dashboard row's dimension value as an alarm needs it: "${X}" becomes what Sub would fill in."""
    if value == _STACK:
        return Ref("AWS::StackName")
    if value.startswith(_STACK):
        return Sub(value)
    if value.startswith("${"):
        return _SUB_VALUES[value[2:-1]]
    return value


def _metric_stat(row: list[Any], period: int) -> cloudwatch.MetricStat:
    metric = cloudwatch.Metric(Namespace=row[0], MetricName=row[1], Dimensions=_dimension_values(row))
    return cloudwatch.MetricStat(Metric=metric, Period=period, Stat=row[-1]["stat"])


def _what_is_measured(alarm: Alarm) -> dict[str, Any]:
    """One metric's properties, or (``alarm.more``) the sum of its rows as metric math."""
    if not alarm.more:
        return {
            "Namespace": alarm.metric[0],
            "MetricName": alarm.metric[1],
            "Dimensions": _dimension_values(alarm.metric),
            "Statistic": alarm.metric[-1]["stat"],
            "Period": alarm.period,
        }
    rows = (alarm.metric, *alarm.more)
    queries = [
        cloudwatch.MetricDataQuery(Id=f"m{number}", MetricStat=_metric_stat(row, alarm.period), ReturnData=False)
        for number, row in enumerate(rows)
    ]
    # A source that published nothing in the period is 0, not a gap that hides the others.
    total = cloudwatch.MetricDataQuery(Id="total", Expression="SUM(FILL(METRICS(), 0))", Label="total", ReturnData=True)
    return {"Metrics": [*queries, total]}


def _add_alarm(template: Template, alarm: Alarm) -> None:
    actions = If(c.HAS_ALARM_TOPIC, [Ref(p.ALARM_TOPIC_ARN)], NoValue)
    template.add_resource(
        cloudwatch.Alarm(
            alarm.logical_id,
            AlarmDescription=Sub("${AWS::StackName}: ${Text}", Text=alarm.description),
            **_what_is_measured(alarm),
            EvaluationPeriods=alarm.evaluation_periods,
            Threshold=alarm.threshold,
            ComparisonOperator=alarm.comparison,
            TreatMissingData=alarm.missing_data,
            AlarmActions=actions,
            OKActions=actions,
        )
    )


# -- scaling on associations ---------------------------------------------------------------------------------------

# Per-task associations as a share of MaximumAssociations that autoscaling keeps tasks at, %.
ASSOCIATION_TARGET_PERCENT = 50.0


def association_scaling_policy() -> aas.ScalingPolicy:
    """Target tracking on open associations per task, next to the CPU policy: whichever asks for more tasks wins.

    Measured (docs/benchmarks.md, section 7): 250 established, idle associations cost one worker 7-10 % CPU, so
    CPU tracking alone lets a task run into MaximumAssociations (and reject senders) long before it scales out.
    """

    def metric(ident: str, namespace: str, name: str, dimensions: dict[str, object], stat: str) -> object:
        return aas.TargetTrackingMetricDataQuery(
            Id=ident,
            ReturnData=False,
            MetricStat=aas.TargetTrackingMetricStat(
                Stat=stat,
                Metric=aas.TargetTrackingMetric(
                    Namespace=namespace,
                    MetricName=name,
                    Dimensions=[aas.TargetTrackingMetricDimension(Name=k, Value=v) for k, v in dimensions.items()],
                ),
            ),
        )

    ecs_service = {"ClusterName": Ref(c.CLUSTER), "ServiceName": GetAtt(c.SERVICE, "Name")}
    return aas.ScalingPolicy(
        "ScpAssociationScalingPolicy",
        PolicyName=Sub("${AWS::StackName}-scp-associations"),
        PolicyType="TargetTrackingScaling",
        ScalingTargetId=Ref(c.SCALABLE_TARGET),
        TargetTrackingScalingPolicyConfiguration=aas.TargetTrackingScalingPolicyConfiguration(
            TargetValue=ASSOCIATION_TARGET_PERCENT,
            ScaleInCooldown=60,
            ScaleOutCooldown=60,
            CustomizedMetricSpecification=aas.CustomizedMetricSpecification(
                Metrics=[
                    # Every worker's one reading a minute, summed: the service's open associations.
                    metric(
                        "associations",
                        m.NAMESPACE,
                        m.ACTIVE_ASSOCIATIONS.name,
                        {m.SERVICE: Ref("AWS::StackName")},
                        "Sum",
                    ),
                    metric("tasks", "ECS/ContainerInsights", "RunningTaskCount", ecs_service, "Average"),
                    aas.TargetTrackingMetricDataQuery(
                        Id="share",
                        Label="open associations per task, % of MaximumAssociations",
                        Expression=Sub("100 * associations / tasks / " + p.in_sub(p.MAXIMUM_ASSOCIATIONS)),
                        ReturnData=True,
                    ),
                ]
            ),
        ),
    )


def add_monitoring(template: Template) -> None:
    add_dashboard(template)
    for alarm in alarms():
        _add_alarm(template, alarm)
    template.add_resource(association_scaling_policy())
