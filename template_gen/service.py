"""Service: the SCP on ECS Fargate behind the load balancer, and its autoscaling."""

from __future__ import annotations

from awacs import ecr, kms, logs, s3
from awacs.aws import (
    Allow,
    PolicyDocument,
    Statement,
)
from troposphere import GetAtt, If, Ref, Select, Split, Sub, Template, ec2, ecs, iam
from troposphere import applicationautoscaling as aas
from troposphere import logs as cwlogs

from template_gen import commitment
from template_gen import common as c

CONTAINER_NAME = "scp"
# The image runs as this non-root user; it must declare ``VOLUME /tmp`` so Fargate seeds the scratch volume
# with the image's /tmp permissions (the root filesystem is read-only).
SCP_USER = "10001:10001"
SCRATCH_VOLUME = "scratch"
SCRATCH_PATH = "/tmp"

# The SCP's configuration contract (DESIGN.md): every variable the task sets, each from a parameter or from
# the stack's DICOM bucket. STORAGE_DIR (local store) is not used in AWS.
CONTAINER_ENVIRONMENT = {
    **commitment.container_environment(),
    "SCP_PORT": Ref("SCPPort"),
    "AE_TITLE": Ref("SCPAETitle"),
    "REQUIRE_CALLED_AE_TITLE": Ref("RequireCalledAETitle"),
    "REQUIRE_CALLING_AE_TITLE": Ref("RequireCallingAETitle"),
    "DIMSE_TIMEOUT": Ref("DIMSETimeout"),
    "NETWORK_TIMEOUT": Ref("NetworkTimeout"),
    "ACSE_TIMEOUT": Ref("ACSETimeout"),
    "MAXIMUM_ASSOCIATIONS": Ref("MaximumAssociations"),
    "MAXIMUM_PDU_SIZE": Ref("MaximumPDUSize"),
    "SUPPORTED_SOP_CLASS_UIDS": Ref("SupportedSOPClassUIDs"),
    "LOG_LEVEL": Ref("LogLevel"),
    "DICOM_BUCKET": c.dicom_bucket_name(),
    "DICOM_PREFIX": Ref("DICOMPrefix"),
    # With client IP preservation the task sees the sender's own address, so it can check it as well.
    "PEER_CIDRS": c.join_nonempty_cidrs(),
    "SHUTDOWN_GRACE_SECONDS": Ref("ShutdownGraceSeconds"),
    "BATCH_MAX_INSTANCES": Ref("BatchMaxInstances"),
    "BATCH_MAX_BYTES": Ref("BatchMaxBytes"),
    "MAX_POOL_CONNECTIONS": Ref("MaxPoolConnections"),
    "S3_SSE": If(c.HAS_KMS_KEY, "aws:kms", "AES256"),
    "S3_KMS_KEY_ID": Ref("KmsKeyArn"),
    "WORKERS": Ref("Workers"),
}


def ecs_tasks_trust() -> PolicyDocument:
    return c.service_trust(
        "ecs-tasks.amazonaws.com", Sub("arn:${AWS::Partition}:ecs:${AWS::Region}:${AWS::AccountId}:*")
    )


def image_repository_arn() -> Sub:
    """The ECR repository of ContainerImageURI.

    ``<account>.dkr.ecr.<region>.amazonaws.com/<repository>[:tag|@digest]``
    """
    uri = Ref("ContainerImageURI")
    path = Select(1, Split(".amazonaws.com/", uri))
    return Sub(
        "arn:${AWS::Partition}:ecr:${Region}:${Account}:repository/${Repository}",
        Region=Select(3, Split(".", uri)),
        Account=Select(0, Split(".", uri)),
        Repository=Select(0, Split("@", Select(0, Split(":", path)))),
    )


def add_service(template: Template) -> None:
    task_sg = template.add_resource(
        ec2.SecurityGroup(
            "ScpTaskSecurityGroup",
            GroupDescription="DICOM SCP tasks: the DICOM port from the load balancer only",
            VpcId=Ref("VpcID"),
            SecurityGroupIngress=[
                ec2.SecurityGroupRule(
                    Description="DICOM traffic and health checks from the load balancer",
                    IpProtocol="tcp",
                    FromPort=Ref("SCPPort"),
                    ToPort=Ref("SCPPort"),
                    SourceSecurityGroupId=GetAtt("LoadBalancerSecurityGroup", "GroupId"),
                )
            ],
            SecurityGroupEgress=[
                ec2.SecurityGroupRule(
                    Description="HTTPS to Amazon S3, ECR and CloudWatch Logs",
                    IpProtocol="tcp",
                    FromPort=443,
                    ToPort=443,
                    CidrIp="0.0.0.0/0",
                )
            ],
        )
    )
    cluster = template.add_resource(
        ecs.Cluster(
            c.CLUSTER,
            ClusterSettings=[ecs.ClusterSetting(Name="containerInsights", Value="enabled")],
        )
    )
    log_group = template.add_resource(
        cwlogs.LogGroup(
            "ScpLogGroup",
            RetentionInDays=Ref("LogRetentionDays"),
            KmsKeyId=c.kms_key_or_none(),
        )
    )
    execution_role = template.add_resource(
        iam.Role(
            "ScpExecutionRole",
            AssumeRolePolicyDocument=ecs_tasks_trust(),
            Policies=[
                iam.Policy(
                    PolicyName="pull-image-and-write-logs",
                    PolicyDocument=PolicyDocument(
                        Version="2012-10-17",
                        Statement=[
                            # GetAuthorizationToken has no resource type: it must be granted on "*".
                            Statement(Effect=Allow, Action=[ecr.GetAuthorizationToken], Resource=["*"]),
                            Statement(
                                Effect=Allow,
                                Action=[
                                    ecr.BatchCheckLayerAvailability,
                                    ecr.BatchGetImage,
                                    ecr.GetDownloadUrlForLayer,
                                ],
                                Resource=[image_repository_arn()],
                            ),
                            Statement(
                                Effect=Allow,
                                Action=[logs.CreateLogStream, logs.PutLogEvents],
                                Resource=[GetAtt(log_group, "Arn")],
                            ),
                        ],
                    ),
                )
            ],
        )
    )
    task_role = template.add_resource(
        iam.Role(
            "ScpTaskRole",
            AssumeRolePolicyDocument=ecs_tasks_trust(),
            Policies=[
                iam.Policy(
                    PolicyName="write-received-instances-and-manifests",
                    PolicyDocument=PolicyDocument(
                        Version="2012-10-17",
                        Statement=[
                            Statement(
                                Effect=Allow,
                                Action=[s3.PutObject, s3.AbortMultipartUpload],
                                Resource=[
                                    c.dicom_bucket_arn("incoming/*"),
                                    c.dicom_bucket_arn("manifests/*"),
                                ],
                            )
                        ],
                    ),
                ),
                # Multipart uploads under SSE-KMS need Decrypt as well as GenerateDataKey.
                c.kms_key_policy("encrypt-with-bucket-key", [kms.GenerateDataKey, kms.Decrypt]),
            ],
        )
    )
    task_definition = template.add_resource(
        ecs.TaskDefinition(
            "ScpTaskDefinition",
            RequiresCompatibilities=["FARGATE"],
            NetworkMode="awsvpc",
            Cpu=Ref("TaskCPU"),
            Memory=Ref("TaskMemoryLimit"),
            EphemeralStorage=ecs.EphemeralStorage(SizeInGiB=Ref("TaskEphemeralStorageGiB")),
            RuntimePlatform=ecs.RuntimePlatform(OperatingSystemFamily="LINUX", CpuArchitecture="X86_64"),
            ExecutionRoleArn=GetAtt(execution_role, "Arn"),
            TaskRoleArn=GetAtt(task_role, "Arn"),
            Volumes=[ecs.Volume(Name=SCRATCH_VOLUME)],
            ContainerDefinitions=[
                ecs.ContainerDefinition(
                    Name=CONTAINER_NAME,
                    Image=Ref("ContainerImageURI"),
                    Essential=True,
                    User=SCP_USER,
                    ReadonlyRootFilesystem=True,
                    Privileged=False,
                    StopTimeout=c.STOP_TIMEOUT_SECONDS,
                    LinuxParameters=ecs.LinuxParameters(
                        InitProcessEnabled=True,
                        Capabilities=ecs.KernelCapabilities(Drop=["ALL"]),
                    ),
                    MountPoints=[
                        ecs.MountPoint(SourceVolume=SCRATCH_VOLUME, ContainerPath=SCRATCH_PATH, ReadOnly=False)
                    ],
                    PortMappings=[ecs.PortMapping(ContainerPort=Ref("SCPPort"), Protocol="tcp")],
                    Environment=[
                        ecs.Environment(Name=name, Value=value) for name, value in CONTAINER_ENVIRONMENT.items()
                    ],
                    LogConfiguration=ecs.LogConfiguration(
                        LogDriver="awslogs",
                        Options={
                            "awslogs-group": Ref(log_group),
                            "awslogs-region": Ref("AWS::Region"),
                            "awslogs-stream-prefix": CONTAINER_NAME,
                            # A throttled log stream must not stall the DICOM receive path.
                            "mode": "non-blocking",
                            "max-buffer-size": "25m",
                        },
                    ),
                )
            ],
        )
    )
    service = template.add_resource(
        ecs.Service(
            c.SERVICE,
            # The target group must be attached to the load balancer (via the listener) before the service.
            DependsOn=["DicomListener"],
            Cluster=Ref(cluster),
            TaskDefinition=Ref(task_definition),
            LaunchType="FARGATE",
            PlatformVersion="LATEST",
            DesiredCount=Ref("TaskDesiredCount"),
            HealthCheckGracePeriodSeconds=60,
            PropagateTags="SERVICE",
            EnableECSManagedTags=True,
            DeploymentConfiguration=ecs.DeploymentConfiguration(
                MinimumHealthyPercent=100,
                MaximumPercent=200,
                DeploymentCircuitBreaker=ecs.DeploymentCircuitBreaker(Enable=True, Rollback=True),
            ),
            NetworkConfiguration=ecs.NetworkConfiguration(
                AwsvpcConfiguration=ecs.AwsvpcConfiguration(
                    AssignPublicIp="DISABLED",
                    Subnets=Ref("PrivateSubnetIDs"),
                    SecurityGroups=If(
                        c.HAS_EXTRA_TASK_SG,
                        [GetAtt(task_sg, "GroupId"), Ref("SecurityGroupID")],
                        [GetAtt(task_sg, "GroupId")],
                    ),
                )
            ),
            LoadBalancers=[
                ecs.LoadBalancer(
                    ContainerName=CONTAINER_NAME,
                    ContainerPort=Ref("SCPPort"),
                    TargetGroupArn=Ref(c.TARGET_GROUP),
                )
            ],
        )
    )
    scalable_target = template.add_resource(
        aas.ScalableTarget(
            "ScpScalableTarget",
            ServiceNamespace="ecs",
            ScalableDimension="ecs:service:DesiredCount",
            ResourceId=Sub("service/${Cluster}/${Service}", Cluster=Ref(cluster), Service=GetAtt(service, "Name")),
            MinCapacity=Ref("TaskDesiredCount"),
            MaxCapacity=Ref("AutoscaleMaxCapacity"),
        )
    )
    template.add_resource(
        aas.ScalingPolicy(
            "ScpCpuScalingPolicy",
            PolicyName=Sub("${AWS::StackName}-scp-cpu"),
            PolicyType="TargetTrackingScaling",
            ScalingTargetId=Ref(scalable_target),
            TargetTrackingScalingPolicyConfiguration=aas.TargetTrackingScalingPolicyConfiguration(
                TargetValue=50.0,
                ScaleInCooldown=60,
                ScaleOutCooldown=60,
                PredefinedMetricSpecification=aas.PredefinedMetricSpecification(
                    PredefinedMetricType="ECSServiceAverageCPUUtilization"
                ),
            ),
        )
    )
