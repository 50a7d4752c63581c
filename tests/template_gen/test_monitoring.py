"""The dashboard and alarms name only metrics that exist: the SCP's, the functions', or an AWS namespace's."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import pytest
from dicom_store_contract import metrics as m

from template_gen.monitoring import DASHBOARD, function_service

ROOT = Path(__file__).resolve().parents[2]

# AWS metrics the template names, with the dimensions each is published under (the services' metric pages).
AWS_METRICS: dict[tuple[str, str], set[str]] = {
    ("AWS/ECS", "CPUUtilization"): {"ClusterName", "ServiceName"},
    ("AWS/ECS", "MemoryUtilization"): {"ClusterName", "ServiceName"},
    ("ECS/ContainerInsights", "RunningTaskCount"): {"ClusterName", "ServiceName"},
    ("ECS/ContainerInsights", "DesiredTaskCount"): {"ClusterName", "ServiceName"},
    ("AWS/NetworkELB", "HealthyHostCount"): {"LoadBalancer", "TargetGroup"},
    ("AWS/NetworkELB", "UnHealthyHostCount"): {"LoadBalancer", "TargetGroup"},
    ("AWS/SQS", "ApproximateNumberOfMessagesVisible"): {"QueueName"},
    ("AWS/States", "ExecutionsStarted"): {"StateMachineArn"},
    ("AWS/States", "ExecutionsSucceeded"): {"StateMachineArn"},
    ("AWS/States", "ExecutionsFailed"): {"StateMachineArn"},
    ("AWS/States", "ExecutionsTimedOut"): {"StateMachineArn"},
    ("AWS/Lambda", "Errors"): {"FunctionName"},
}


def _is_contract_namespace(node: ast.expr | None, module: ast.Module) -> bool:
    """``node`` names the contract's NAMESPACE, imported from dicom_store_contract.metrics (never a copy)."""
    if not isinstance(node, ast.Name):
        return False
    return any(
        isinstance(statement, ast.ImportFrom)
        and statement.module == "dicom_store_contract.metrics"
        and any(alias.name == "NAMESPACE" and (alias.asname or alias.name) == node.id for alias in statement.names)
        for statement in module.body
    )


def published_by_functions() -> dict[str, set[str]]:
    """functions/<module>.py -> the metric names it passes to Powertools' add_metric, read from the source."""
    published: dict[str, set[str]] = {}
    for path in (ROOT / "functions").glob("*.py"):
        tree = ast.parse(path.read_text())
        names = set()
        namespace_ok = False
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            keywords = {k.arg: k.value for k in node.keywords}
            callee = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if callee == "add_metric":
                # name="X", or name="X" if ... else "Y"
                names |= {
                    c.value
                    for c in ast.walk(keywords["name"])
                    if isinstance(c, ast.Constant) and isinstance(c.value, str)
                }
            if callee == "Metrics":
                namespace_ok = _is_contract_namespace(keywords.get("namespace"), tree)
        if names:
            assert namespace_ok, f"{path.name} publishes outside {m.NAMESPACE}"
            published[path.stem] = names
    return published


def dashboard(template: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    body, values = template["Resources"][DASHBOARD]["Properties"]["DashboardBody"]["Fn::Sub"]
    return json.loads(body), values


def alarm_metrics(props: dict[str, Any]) -> list[dict[str, Any]]:
    """The metrics an alarm is on: its own, or those of its metric math."""
    if "Metrics" in props:
        return [query["MetricStat"]["Metric"] for query in props["Metrics"] if "MetricStat" in query]
    return [{name: props[name] for name in ("Namespace", "MetricName", "Dimensions")}]


def named_metrics(template: dict[str, Any]) -> list[tuple[str, str, dict[str, Any], str]]:
    """(namespace, name, dimensions, where) of every metric a widget or an alarm names."""
    found = []
    body, _ = dashboard(template)
    for widget in body["widgets"]:
        for row in widget["properties"].get("metrics", []):
            if isinstance(row[0], dict):
                continue  # a math expression over the rows that follow
            namespace, name, *pairs, _options = row
            found.append(
                (namespace, name, dict(zip(pairs[::2], pairs[1::2], strict=True)), widget["properties"]["title"])
            )
    for logical_id, resource in template["Resources"].items():
        if resource["Type"] == "AWS::CloudWatch::Alarm":
            props = resource["Properties"]
            for metric in alarm_metrics(props):
                dimensions = {d["Name"]: d["Value"] for d in metric["Dimensions"]}
                found.append((metric["Namespace"], metric["MetricName"], dimensions, logical_id))
        if resource["Type"] == "AWS::ApplicationAutoScaling::ScalingPolicy":
            tracking = resource["Properties"]["TargetTrackingScalingPolicyConfiguration"]
            for query in tracking.get("CustomizedMetricSpecification", {}).get("Metrics", []):
                if "MetricStat" in query:
                    metric = query["MetricStat"]["Metric"]
                    dimensions = {d["Name"]: d["Value"] for d in metric["Dimensions"]}
                    found.append((metric["Namespace"], metric["MetricName"], dimensions, logical_id))
    return found


def test_every_named_metric_is_emitted(template: dict[str, Any]) -> None:
    scp = m.by_name()
    functions = {metric.name: metric for metric in m.FUNCTION_METRICS}
    published = published_by_functions()
    for namespace, name, dimensions, where in named_metrics(template):
        if namespace != m.NAMESPACE:
            assert (namespace, name) in AWS_METRICS, (where, namespace, name)
            assert set(dimensions) == AWS_METRICS[(namespace, name)], (where, name)
            continue
        if dimensions[m.SERVICE] in ("${AWS::StackName}", {"Ref": "AWS::StackName"}):
            metric = scp[name]
            extra = set(dimensions) - {m.SERVICE}
            assert extra <= {metric.by} if metric.by else not extra, (where, name, dimensions)
            if m.REASON in dimensions:
                assert dimensions[m.REASON] in m.REJECTION_REASONS
            if m.STATUS_FAMILY in dimensions:
                assert dimensions[m.STATUS_FAMILY] in m.STATUS_FAMILIES
        else:
            emitted = functions[name]
            service = dimensions[m.SERVICE]
            service = service["Fn::Sub"] if isinstance(service, dict) else service  # an alarm's, or the dashboard's
            publishers = [module for module in emitted.modules if service == function_service(emitted, module)]
            assert dimensions == {m.SERVICE: dimensions[m.SERVICE]} and publishers, (where, name)
            (module,) = publishers
            assert name in published.get(module, set()), f"functions/{module}.py no longer emits {name}"


def test_every_metric_the_scp_writes_is_on_the_dashboard(template: dict[str, Any]) -> None:
    on_dashboard = {name for namespace, name, _, where in named_metrics(template) if not where.endswith("Alarm")}
    assert {metric.name for metric in m.SCP_METRICS} <= on_dashboard


def test_dashboard_placeholders_are_all_filled(template: dict[str, Any]) -> None:
    body, values = template["Resources"][DASHBOARD]["Properties"]["DashboardBody"]["Fn::Sub"]
    used = set(re.findall(r"\$\{([^}!]+)\}", body))
    assert {name for name in used if not name.startswith("AWS::")} == set(values)


def test_dashboard_widgets_do_not_overlap(template: dict[str, Any]) -> None:
    body, _ = dashboard(template)
    cells: set[tuple[int, int]] = set()
    for widget in body["widgets"]:
        assert widget["x"] + widget["width"] <= 24
        area = {
            (x, y)
            for x in range(widget["x"], widget["x"] + widget["width"])
            for y in range(widget["y"], widget["y"] + widget["height"])
        }
        assert not area & cells, widget
        cells |= area


@pytest.mark.parametrize(
    "alarm",
    [
        "ScpStoreFailuresAlarm",
        "ScpRejectedAssociationsAlarm",
        "InstanceImportFailuresAlarm",
        "ImportEventDeadLettersAlarm",
        "NoHealthyScpTaskAlarm",
        "AuditMessagesLostAlarm",
    ],
)
def test_alarms_for_a_person_say_what_to_check_first(template: dict[str, Any], alarm: str) -> None:
    props = template["Resources"][alarm]["Properties"]
    description = props["AlarmDescription"]["Fn::Sub"]
    assert "Check first: " in json.dumps(description)
    assert props["AlarmActions"] == {"Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmTopicARN"}], {"Ref": "AWS::NoValue"}]}


def test_store_failures_page_only_after_minutes_in_a_row(template: dict[str, Any]) -> None:
    props = template["Resources"]["ScpStoreFailuresAlarm"]["Properties"]
    assert (props["MetricName"], props["Period"], props["EvaluationPeriods"]) == ("StoresFailed", 60, 5)
    assert props["Dimensions"] == [{"Name": m.SERVICE, "Value": {"Ref": "AWS::StackName"}}]


def test_every_function_publishing_a_metric_is_listed_with_it() -> None:
    # A function metric's dashboard rows and alarms name the services of the functions listed with it: one
    # publishing it unlisted would be on no widget and under no alarm.
    published = published_by_functions()
    for metric in m.FUNCTION_METRICS:
        publishers = {module for module, names in published.items() if metric.name in names}
        assert publishers == set(metric.modules), metric.name


AUDIT_LOST = [
    ("AuditMessagesDropped", {"Ref": "AWS::StackName"}),
    ("AuditMessagesNotWritten", {"Fn::Sub": "${AWS::StackName}-check-status"}),
    ("AuditMessagesNotWritten", {"Fn::Sub": "${AWS::StackName}-store-batch"}),
    ("AuditMessagesNotWritten", {"Fn::Sub": "${AWS::StackName}-record-failure"}),
]


def test_audit_messages_lost_by_the_scp_or_any_function_are_on_the_dashboard(template: dict[str, Any]) -> None:
    body, _ = dashboard(template)
    (widget,) = [w for w in body["widgets"] if w["properties"].get("title", "").startswith("Audit messages lost")]
    rows = [(row[1], row[3]) for row in widget["properties"]["metrics"]]
    assert rows == [(name, service.get("Fn::Sub", "${AWS::StackName}")) for name, service in AUDIT_LOST]
    assert all(row[-1]["stat"] == "Sum" for row in widget["properties"]["metrics"])


def test_one_audit_message_lost_anywhere_raises_the_alarm(template: dict[str, Any]) -> None:
    props = template["Resources"]["AuditMessagesLostAlarm"]["Properties"]
    *queries, total = props["Metrics"]
    measured = [
        (q["MetricStat"]["Metric"]["MetricName"], q["MetricStat"]["Metric"]["Dimensions"][0]["Value"]) for q in queries
    ]
    assert measured == AUDIT_LOST
    assert {(q["MetricStat"]["Stat"], q["MetricStat"]["Period"], q["ReturnData"]) for q in queries} == {
        ("Sum", 300, False)
    }
    # The sum over every source, a quiet one counted as 0: one message lost anywhere is >= 1.
    assert (total["Expression"], total["ReturnData"]) == ("SUM(FILL(METRICS(), 0))", True)
    assert (props["Threshold"], props["ComparisonOperator"], props["EvaluationPeriods"]) == (
        1,
        "GreaterThanOrEqualToThreshold",
        1,
    )
    assert props["TreatMissingData"] == "notBreaching"
    assert props["OKActions"] == props["AlarmActions"]
    assert not {"Namespace", "MetricName", "Dimensions", "Statistic", "Period"} & set(props)


def test_tasks_scale_on_open_associations_as_well_as_cpu(template: dict[str, Any]) -> None:
    policies = {
        name: resource["Properties"]
        for name, resource in template["Resources"].items()
        if resource["Type"] == "AWS::ApplicationAutoScaling::ScalingPolicy"
    }
    assert set(policies) == {"ScpCpuScalingPolicy", "ScpAssociationScalingPolicy"}
    cpu = policies["ScpCpuScalingPolicy"]["TargetTrackingScalingPolicyConfiguration"]
    assert (cpu["TargetValue"], cpu["ScaleInCooldown"], cpu["ScaleOutCooldown"]) == (50.0, 60, 60)
    associations = policies["ScpAssociationScalingPolicy"]
    assert associations["ScalingTargetId"] == policies["ScpCpuScalingPolicy"]["ScalingTargetId"]
    tracking = associations["TargetTrackingScalingPolicyConfiguration"]
    assert (tracking["TargetValue"], tracking["ScaleInCooldown"], tracking["ScaleOutCooldown"]) == (50.0, 60, 60)
    queries = {query["Id"]: query for query in tracking["CustomizedMetricSpecification"]["Metrics"]}
    assert queries["associations"]["MetricStat"]["Metric"]["MetricName"] == m.ACTIVE_ASSOCIATIONS.name
    assert queries["associations"]["MetricStat"]["Stat"] == "Sum"
    [returned] = [query for query in queries.values() if query["ReturnData"]]
    assert returned["Expression"] == {"Fn::Sub": "100 * associations / tasks / ${MaximumAssociations}"}


def test_a_function_metric_never_takes_an_scp_metrics_name_or_constant() -> None:
    # Both live in one module: a function metric named like an SCP metric (or assigned to its constant) would make
    # the dashboard's rows and the SCP's counters mean two things.
    scp_names = {metric.name for metric in m.SCP_METRICS}
    assert scp_names.isdisjoint(metric.name for metric in m.FUNCTION_METRICS)
    # Every SCP metric is still the value of its constant (container/dicom_store_scp/metrics.py counts by them).
    constants = [value for name, value in vars(m).items() if name.isupper() and isinstance(value, m.Metric)]
    assert all(any(metric is value for value in constants) for metric in m.SCP_METRICS)
