"""Network: the access-log bucket, the load balancer's security group, the NLB, its target group and listener,
optional VPC flow logs."""

from __future__ import annotations

from awacs.aws import (
    Action,
    Allow,
    Bool,
    Condition,
    Deny,
    PolicyDocument,
    Principal,
    Statement,
    StringEquals,
)
from awacs.aws import ArnLike as ArnLikeCondition
from awacs.s3 import GetBucketAcl, PutObject
from troposphere import GetAtt, If, Ref, Sub, Template, ec2, s3
from troposphere import elasticloadbalancingv2 as elbv2

from template_gen import common as c
from template_gen import parameters as p

# Where each log lands inside the access-log bucket.
NLB_LOG_PREFIX = "nlb"
FLOW_LOG_PREFIX = "flow-logs"
S3_ACCESS_LOG_PREFIX = "s3-access/"

TLS_POLICY = "ELBSecurityPolicy-TLS13-1-2-2021-06"


def tls_only_statement(bucket_arn: object) -> Statement:
    """Deny any request to the bucket that does not arrive over TLS."""
    return Statement(
        Sid="DenyInsecureTransport",
        Effect=Deny,
        Principal=Principal("*"),
        Action=[Action("s3", "*")],
        Resource=[bucket_arn, Sub("${Arn}/*", Arn=bucket_arn)],
        Condition=Condition(Bool("aws:SecureTransport", "false")),
    )


def add_network(template: Template) -> None:
    _add_access_log_bucket(template)
    _add_load_balancer(template)
    _add_flow_logs(template)


def _add_access_log_bucket(template: Template) -> None:
    bucket = template.add_resource(
        s3.Bucket(
            c.ACCESS_LOG_BUCKET,
            **c.RETAIN,
            Metadata=c.skip_checks(
                ("CKV_AWS_18", "This is the access-log destination; logging it to itself would loop."),
            ),
            # S3 server access logging delivers only to buckets encrypted with SSE-S3.
            BucketEncryption=s3.BucketEncryption(
                ServerSideEncryptionConfiguration=[
                    s3.ServerSideEncryptionRule(
                        ServerSideEncryptionByDefault=s3.ServerSideEncryptionByDefault(SSEAlgorithm="AES256")
                    )
                ]
            ),
            OwnershipControls=s3.OwnershipControls(
                Rules=[s3.OwnershipControlsRule(ObjectOwnership="BucketOwnerEnforced")]
            ),
            PublicAccessBlockConfiguration=_block_public_access(),
            VersioningConfiguration=s3.VersioningConfiguration(Status="Enabled"),
            LifecycleConfiguration=s3.LifecycleConfiguration(
                Rules=[
                    s3.LifecycleRule(
                        Id="ExpireLogs",
                        Status="Enabled",
                        ExpirationInDays=Ref(p.LOG_RETENTION_DAYS),
                        NoncurrentVersionExpiration=s3.NoncurrentVersionExpiration(NoncurrentDays=7),
                        AbortIncompleteMultipartUpload=s3.AbortIncompleteMultipartUpload(DaysAfterInitiation=1),
                    )
                ]
            ),
        )
    )
    bucket_arn = GetAtt(bucket, "Arn")
    log_delivery = Principal("Service", "delivery.logs.amazonaws.com")
    same_account = StringEquals("aws:SourceAccount", Ref("AWS::AccountId"))
    template.add_resource(
        s3.BucketPolicy(
            "AccessLogBucketPolicy",
            Bucket=Ref(bucket),
            PolicyDocument=PolicyDocument(
                Version="2012-10-17",
                Statement=[
                    tls_only_statement(bucket_arn),
                    Statement(
                        Sid="S3ServerAccessLogs",
                        Effect=Allow,
                        Principal=Principal("Service", "logging.s3.amazonaws.com"),
                        Action=[PutObject],
                        Resource=[Sub("${Arn}/" + S3_ACCESS_LOG_PREFIX + "*", Arn=bucket_arn)],
                        Condition=Condition(
                            [
                                same_account,
                                ArnLikeCondition(
                                    "aws:SourceArn",
                                    [c.dicom_bucket_arn(), GetAtt(c.RESULTS_BUCKET, "Arn")],
                                ),
                            ]
                        ),
                    ),
                    Statement(
                        Sid="LogDeliveryWrite",
                        Effect=Allow,
                        Principal=log_delivery,
                        Action=[PutObject],
                        Resource=[
                            Sub(f"${{Arn}}/{prefix}/AWSLogs/${{AWS::AccountId}}/*", Arn=bucket_arn)
                            for prefix in (NLB_LOG_PREFIX, FLOW_LOG_PREFIX)
                        ],
                        Condition=Condition(
                            StringEquals(
                                {
                                    "aws:SourceAccount": Ref("AWS::AccountId"),
                                    "s3:x-amz-acl": "bucket-owner-full-control",
                                }
                            )
                        ),
                    ),
                    Statement(
                        Sid="LogDeliveryAclCheck",
                        Effect=Allow,
                        Principal=log_delivery,
                        Action=[GetBucketAcl],
                        Resource=[bucket_arn],
                        Condition=Condition(same_account),
                    ),
                ],
            ),
        )
    )


def _block_public_access() -> s3.PublicAccessBlockConfiguration:
    return s3.PublicAccessBlockConfiguration(
        BlockPublicAcls=True, BlockPublicPolicy=True, IgnorePublicAcls=True, RestrictPublicBuckets=True
    )


def _add_load_balancer(template: Template) -> None:
    template.add_resource(load_balancer_security_group())
    # One resource per peer CIDR so that an empty parameter adds no rule at all.
    for n, condition in ((1, None), (2, c.HAS_PEER_CIDR2), (3, c.HAS_PEER_CIDR3)):
        template.add_resource(peer_ingress(n, condition))
    template.add_resource(load_balancer())
    template.add_resource(target_group())
    template.add_resource(listener())


def load_balancer_security_group() -> ec2.SecurityGroup:
    return ec2.SecurityGroup(
        c.LOAD_BALANCER_SECURITY_GROUP,
        GroupDescription="DICOM load balancer: the DICOM port from the allowed peers only",
        VpcId=Ref(p.VPC_ID),
        SecurityGroupEgress=[
            ec2.SecurityGroupRule(
                Description="DICOM traffic and health checks to the SCP tasks",
                IpProtocol="tcp",
                FromPort=Ref(p.SCP_PORT),
                ToPort=Ref(p.SCP_PORT),
                DestinationSecurityGroupId=GetAtt(c.TASK_SECURITY_GROUP, "GroupId"),
            )
        ],
    )


def peer_ingress(n: int, condition: str | None) -> ec2.SecurityGroupIngress:
    ingress = ec2.SecurityGroupIngress(
        f"LoadBalancerIngressPeer{n}",
        GroupId=GetAtt(c.LOAD_BALANCER_SECURITY_GROUP, "GroupId"),
        Description=f"DICOM from allowed peers {n}",
        IpProtocol="tcp",
        FromPort=Ref(p.LISTENER_PORT),
        ToPort=Ref(p.LISTENER_PORT),
        CidrIp=Ref(f"PeerCIDR{n}"),
    )
    if condition:
        ingress.Condition = condition
    return ingress


def load_balancer() -> elbv2.LoadBalancer:
    return elbv2.LoadBalancer(
        c.LOAD_BALANCER,
        DependsOn=["AccessLogBucketPolicy"],
        Metadata=c.skip_checks(
            ("CKV_AWS_150", "Deletion protection would make deleting the product's stack fail."),
        ),
        Type="network",
        Scheme=Ref(p.LOAD_BALANCER_SCHEME),
        Subnets=Ref(p.LOAD_BALANCER_SUBNET_IDS),
        SecurityGroups=[GetAtt(c.LOAD_BALANCER_SECURITY_GROUP, "GroupId")],
        LoadBalancerAttributes=[
            elbv2.LoadBalancerAttributes(Key="load_balancing.cross_zone.enabled", Value="true"),
            # NLBs write access logs for TLS listeners only; with plain TCP the setting is inert.
            elbv2.LoadBalancerAttributes(Key="access_logs.s3.enabled", Value="true"),
            elbv2.LoadBalancerAttributes(Key="access_logs.s3.bucket", Value=Ref(c.ACCESS_LOG_BUCKET)),
            elbv2.LoadBalancerAttributes(Key="access_logs.s3.prefix", Value=NLB_LOG_PREFIX),
        ],
    )


def target_group() -> elbv2.TargetGroup:
    return elbv2.TargetGroup(
        c.TARGET_GROUP,
        TargetType="ip",
        Protocol="TCP",
        Port=Ref(p.SCP_PORT),
        VpcId=Ref(p.VPC_ID),
        HealthCheckProtocol="TCP",
        HealthCheckIntervalSeconds=10,
        HealthyThresholdCount=2,
        UnhealthyThresholdCount=2,
        TargetGroupAttributes=[
            elbv2.TargetGroupAttribute(
                Key="deregistration_delay.timeout_seconds", Value=str(c.DEREGISTRATION_DELAY_SECONDS)
            ),
            # IP targets over TCP do not preserve the client address by default; the SCP checks peers
            # against PEER_CIDRS and logs them, so it needs the real one.
            elbv2.TargetGroupAttribute(Key="preserve_client_ip.enabled", Value="true"),
        ],
    )


def listener() -> elbv2.Listener:
    return elbv2.Listener(
        c.LISTENER,
        Metadata=c.skip_checks(
            *(
                (
                    check,
                    "DICOM over TLS when TLSCertificateARN is given (TLS 1.2+ policy); many modalities "
                    "speak plain DICOM only, so TCP stays the deployer's choice, limited to PeerCIDR1-3 (a Rule "
                    "refuses plain TCP on an internet-facing load balancer unless "
                    "AllowClearTextDicomFromTheInternet is true).",
                )
                for check in ("CKV_AWS_2", "CKV_AWS_103")
            )
        ),
        LoadBalancerArn=Ref(c.LOAD_BALANCER),
        Port=Ref(p.LISTENER_PORT),
        # DICOM TLS ends at the load balancer; the task sees plain TCP.
        Protocol=If(c.HAS_TLS, "TLS", "TCP"),
        Certificates=If(c.HAS_TLS, [elbv2.Certificate(CertificateArn=Ref(p.TLS_CERTIFICATE_ARN))], Ref("AWS::NoValue")),
        SslPolicy=If(c.HAS_TLS, TLS_POLICY, Ref("AWS::NoValue")),
        DefaultActions=[elbv2.Action(Type="forward", TargetGroupArn=Ref(c.TARGET_GROUP))],
    )


def _add_flow_logs(template: Template) -> None:
    template.add_resource(
        ec2.FlowLog(
            "VpcFlowLog",
            Condition=c.ENABLE_FLOW_LOGS,
            DependsOn=["AccessLogBucketPolicy"],
            ResourceId=Ref(p.VPC_ID),
            ResourceType="VPC",
            TrafficType="ALL",
            LogDestinationType="s3",
            LogDestination=Sub("${Arn}/" + FLOW_LOG_PREFIX + "/", Arn=GetAtt(c.ACCESS_LOG_BUCKET, "Arn")),
        )
    )
