"""Monitoring: alarms on failed imports, function errors, dead letters, an endpoint without healthy tasks."""

from __future__ import annotations

from troposphere import GetAtt, If, NoValue, Ref, Sub, Template, cloudwatch

from template_gen import common as c
from template_gen.pipeline import FUNCTIONS


def _alarm(
    logical_id: str,
    description: str,
    namespace: str,
    metric: str,
    dimensions: dict[str, object],
    statistic: str = "Sum",
    comparison: str = "GreaterThanOrEqualToThreshold",
    threshold: float = 1,
) -> cloudwatch.Alarm:
    actions = If(c.HAS_ALARM_TOPIC, [Ref("AlarmTopicARN")], NoValue)
    return cloudwatch.Alarm(
        logical_id,
        AlarmDescription=Sub("${AWS::StackName}: " + description),
        Namespace=namespace,
        MetricName=metric,
        Dimensions=[cloudwatch.MetricDimension(Name=k, Value=v) for k, v in dimensions.items()],
        Statistic=statistic,
        Period=300,
        EvaluationPeriods=1,
        Threshold=threshold,
        ComparisonOperator=comparison,
        # No data means nothing ran, which is not a failure.
        TreatMissingData="notBreaching",
        AlarmActions=actions,
        OKActions=actions,
    )


def add_monitoring(template: Template) -> None:
    workflow = {"StateMachineArn": Ref(c.STATE_MACHINE)}
    template.add_resource(
        _alarm(
            "ImportWorkflowFailedAlarm",
            "import workflow executions failed",
            "AWS/States",
            "ExecutionsFailed",
            workflow,
        )
    )
    template.add_resource(
        _alarm(
            "ImportWorkflowTimedOutAlarm",
            "import workflow executions timed out",
            "AWS/States",
            "ExecutionsTimedOut",
            workflow,
        )
    )
    for fn in FUNCTIONS:
        template.add_resource(
            _alarm(
                f"{fn.name}ErrorsAlarm",
                f"{fn.name} function errors",
                "AWS/Lambda",
                "Errors",
                {"FunctionName": Ref(f"{fn.name}Function")},
            )
        )
    template.add_resource(
        _alarm(
            "ImportEventDeadLettersAlarm",
            "manifest or sweep events could not be processed",
            "AWS/SQS",
            "ApproximateNumberOfMessagesVisible",
            {"QueueName": GetAtt("ImportEventDeadLetterQueue", "QueueName")},
            statistic="Maximum",
        )
    )
    template.add_resource(
        _alarm(
            "NoHealthyScpTaskAlarm",
            "no healthy SCP task behind the DICOM endpoint",
            "AWS/NetworkELB",
            "HealthyHostCount",
            {
                "LoadBalancer": GetAtt(c.LOAD_BALANCER, "LoadBalancerFullName"),
                "TargetGroup": GetAtt(c.TARGET_GROUP, "TargetGroupFullName"),
            },
            statistic="Minimum",
            comparison="LessThanThreshold",
            threshold=1,
        )
    )
