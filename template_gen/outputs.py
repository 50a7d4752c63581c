"""Outputs: the DICOM endpoint (the seed's names) and where the pipeline keeps its data."""

from __future__ import annotations

from troposphere import GetAtt, Output, Ref, Sub, Template

from template_gen import common as c
from template_gen import parameters as p
from template_gen.audit import AUDIT_LOG_GROUP
from template_gen.monitoring import DASHBOARD
from template_gen.pipeline import BY_NAME


def add_outputs(template: Template) -> None:
    outputs = {
        "NetworkLoadBalancerDNS": ("DNS name of the DICOM endpoint", GetAtt(c.LOAD_BALANCER, "DNSName")),
        "DICOMPort": ("TCP port of the DICOM endpoint", Ref(p.LISTENER_PORT)),
        "DICOMAETitle": ("AE title of the DICOM endpoint", Ref(p.SCP_AE_TITLE)),
        "DatastoreID": ("HealthImaging data store receiving the imports", c.datastore_id()),
        "DICOMBucketName": ("Bucket of received instances and batch manifests", c.dicom_bucket_name()),
        "ImportResultsBucketName": ("Bucket of HealthImaging import job output", Ref(c.RESULTS_BUCKET)),
        "AccessLogBucketName": (
            "Bucket of access logs (S3, load balancer, flow logs)",
            Ref(c.ACCESS_LOG_BUCKET),
        ),
        "ImportJobTableName": ("DynamoDB table of import jobs", Ref(c.JOB_TABLE)),
        "InstanceTableName": ("DynamoDB table of received instances", Ref(c.INSTANCE_TABLE)),
        "StateMachineArn": ("Import workflow state machine", Ref(c.STATE_MACHINE)),
        # dicom-store-scp redrive invokes it for a manifest no workflow picked up (TRIGGER_IMPORT_FUNCTION).
        "TriggerImportFunctionName": (
            "Function that starts a batch's import workflow",
            Ref(BY_NAME["TriggerImport"].logical_id),
        ),
        # Troubleshooting starts here (docs/deployment.md): the SCP's log lines and the stack's dashboard.
        "ScpLogGroupName": ("CloudWatch log group of the SCP tasks", Ref(c.SCP_LOG_GROUP)),
        "DashboardURL": (
            "CloudWatch dashboard of the stack",
            Sub(
                "https://${AWS::Region}.console.aws.amazon.com/cloudwatch/home?region=${AWS::Region}"
                "#dashboards:name=${Name}",
                Name=Ref(DASHBOARD),
            ),
        ),
        "AuditLogGroupName": ("Log group of the DICOM audit messages (patient identifiers)", Ref(AUDIT_LOG_GROUP)),
    }
    for name, (description, value) in outputs.items():
        template.add_output(Output(name, Description=description, Value=value))
