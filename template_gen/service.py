"""Service: the SCP on ECS Fargate behind the load balancer, and its autoscaling."""

from __future__ import annotations

from awacs import ecr, kms, logs, medical_imaging, s3
from awacs.aws import (
    Allow,
    PolicyDocument,
    Statement,
)
from dicom_store_contract import launch
from troposphere import GetAtt, If, NoValue, Ref, Select, Split, Sub, Template, cloudformation, ec2, ecs, iam
from troposphere import applicationautoscaling as aas

from template_gen import audit, commitment, release
from template_gen import common as c
from template_gen import parameters as p

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
    **audit.container_environment(),
    **audit.syslog_environment(),
    "SCP_PORT": Ref(p.SCP_PORT),
    "AE_TITLE": Ref(p.SCP_AE_TITLE),
    "REQUIRE_CALLED_AE_TITLE": Ref(p.REQUIRE_CALLED_AE_TITLE),
    "REQUIRE_CALLING_AE_TITLE": Ref(p.REQUIRE_CALLING_AE_TITLE),
    "DIMSE_TIMEOUT": Ref(p.DIMSE_TIMEOUT),
    "NETWORK_TIMEOUT": Ref(p.NETWORK_TIMEOUT),
    "ACSE_TIMEOUT": Ref(p.ACSE_TIMEOUT),
    "MAXIMUM_ASSOCIATIONS": Ref(p.MAXIMUM_ASSOCIATIONS),
    "MAXIMUM_PDU_SIZE": Ref(p.MAXIMUM_PDU_SIZE),
    "SUPPORTED_SOP_CLASS_UIDS": Ref(p.SUPPORTED_SOP_CLASS_UIDS),
    "LOG_LEVEL": Ref(p.LOG_LEVEL),
    "DICOM_BUCKET": c.dicom_bucket_name(),
    "DICOM_PREFIX": Ref(p.DICOM_PREFIX),
    # With client IP preservation the task sees the sender's own address, so it can check it as well.
    "PEER_CIDRS": c.join_nonempty_cidrs(),
    "SHUTDOWN_GRACE_SECONDS": Ref(p.SHUTDOWN_GRACE_SECONDS),
    "BATCH_MAX_INSTANCES": Ref(p.BATCH_MAX_INSTANCES),
    "BATCH_MAX_BYTES": Ref(p.BATCH_MAX_BYTES),
    "MAX_POOL_CONNECTIONS": Ref(p.MAX_POOL_CONNECTIONS),
    "S3_SSE": If(c.HAS_KMS_KEY, "aws:kms", "AES256"),
    "S3_KMS_KEY_ID": Ref(p.KMS_KEY_ARN),
    "WORKERS": Ref(p.WORKERS),
    "INGEST_MODE": Ref(p.INGEST_MODE),
    "DATASTORE_ID": c.datastore_id(),
    "AHI_STOW_URL": c.stow_base_url(),
    "STOW_KEEP_S3_COPY": Ref(p.STOW_KEEP_S3_COPY),
    # The service dimension of the SCP's metrics (template_gen/monitoring.py names it so).
    "METRICS_SERVICE": Ref("AWS::StackName"),
}


def ecs_tasks_trust() -> PolicyDocument:
    return c.service_trust(
        "ecs-tasks.amazonaws.com", Sub("arn:${AWS::Partition}:ecs:${AWS::Region}:${AWS::AccountId}:*")
    )


def image_repository_arn() -> Sub:
    """The ECR repository of the release's image.

    ``<account>.dkr.ecr.<region>.amazonaws.com/<repository>[:tag|@digest]``
    """
    uri = release.image_uri()
    path = Select(1, Split(".amazonaws.com/", uri))
    return Sub(
        "arn:${AWS::Partition}:ecr:${Region}:${Account}:repository/${Repository}",
        Region=Select(3, Split(".", uri)),
        Account=Select(0, Split(".", uri)),
        Repository=Select(0, Split("@", Select(0, Split(":", path)))),
    )


EXECUTION_ROLE = "ScpExecutionRole"
TASK_DEFINITION = "ScpTaskDefinition"
ECS_SERVICE_LINKED_ROLE = "EcsServiceLinkedRole"
# Nothing but an ordering point: it depends on the service-linked role when the stack creates one (DependsOn
# cannot name a resource that may not exist; a Ref under Fn::If in Metadata can).
ECS_SERVICE_LINKED_ROLE_READY = "EcsServiceLinkedRoleReady"


def add_service(template: Template) -> None:
    for resource in (
        ecs_service_linked_role(),
        ecs_service_linked_role_ready(),
        task_security_group(),
        task_ingress_from_load_balancer(),
        cluster(),
        c.log_group(c.SCP_LOG_GROUP),
        execution_role(),
        task_role(),
        task_definition(),
        service(),
        scalable_target(),
        cpu_scaling_policy(),
    ):
        template.add_resource(resource)


def ecs_service_linked_role() -> iam.ServiceLinkedRole:
    """AWSServiceRoleForECS, for an account that has never used ECS.

    CreateCluster makes the role itself when it is missing and assumes it at once, before IAM has propagated it:
    the first cluster of an account often fails ("Unable to assume the service linked role"). Made here, it
    exists before the cluster, and the IAM roles the cluster waits for (below) give it time to propagate. Kept
    when the stack goes: the role is the account's, and other clusters may rely on it.
    """
    return iam.ServiceLinkedRole(
        ECS_SERVICE_LINKED_ROLE,
        Condition=c.CREATE_ECS_SERVICE_LINKED_ROLE,
        DeletionPolicy="Retain",
        UpdateReplacePolicy="Retain",
        AWSServiceName="ecs.amazonaws.com",
        Description="Amazon ECS service-linked role, created by the DICOM Store SCP stack",
    )


def ecs_service_linked_role_ready() -> cloudformation.WaitConditionHandle:
    return cloudformation.WaitConditionHandle(
        ECS_SERVICE_LINKED_ROLE_READY,
        Metadata={"ServiceLinkedRole": If(c.CREATE_ECS_SERVICE_LINKED_ROLE, Ref(ECS_SERVICE_LINKED_ROLE), NoValue)},
    )


def task_security_group() -> ec2.SecurityGroup:
    return ec2.SecurityGroup(
        c.TASK_SECURITY_GROUP,
        GroupDescription="DICOM SCP tasks: the DICOM port from the load balancer only",
        VpcId=Ref(p.VPC_ID),
        # DNS: the Amazon-provided resolver is not subject to security groups; resolvers of one's own are
        # admitted by the additional task security group (SecurityGroupID). docs/deployment.md says so.
        SecurityGroupEgress=[
            ec2.SecurityGroupRule(
                Description="HTTPS to Amazon S3, DynamoDB, ECR and CloudWatch Logs (NAT gateway or VPC endpoints)",
                IpProtocol="tcp",
                FromPort=443,
                ToPort=443,
                CidrIp="0.0.0.0/0",
            )
        ],
    )


def task_ingress_from_load_balancer() -> ec2.SecurityGroupIngress:
    # Its own resource: the load balancer's group names this group in its egress, so an inline rule here would
    # make the two groups depend on each other.
    return ec2.SecurityGroupIngress(
        "ScpTaskIngressFromLoadBalancer",
        GroupId=GetAtt(c.TASK_SECURITY_GROUP, "GroupId"),
        Description="DICOM traffic and health checks from the load balancer",
        IpProtocol="tcp",
        FromPort=Ref(p.SCP_PORT),
        ToPort=Ref(p.SCP_PORT),
        SourceSecurityGroupId=GetAtt(c.LOAD_BALANCER_SECURITY_GROUP, "GroupId"),
    )


def cluster() -> ecs.Cluster:
    # After the service-linked role (when made here) and the task's roles, which are made after it: IAM role
    # creation takes seconds, which the new service-linked role needs to propagate before ECS assumes it.
    return ecs.Cluster(
        c.CLUSTER,
        DependsOn=[ECS_SERVICE_LINKED_ROLE_READY, EXECUTION_ROLE, c.TASK_ROLE],
        ClusterSettings=[ecs.ClusterSetting(Name="containerInsights", Value="enabled")],
    )


def execution_role() -> iam.Role:
    return iam.Role(
        EXECUTION_ROLE,
        DependsOn=[ECS_SERVICE_LINKED_ROLE_READY],
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
                            Resource=[GetAtt(c.SCP_LOG_GROUP, "Arn")],
                        ),
                    ],
                ),
            ),
            *audit.execution_policies(),
        ],
    )


def task_role() -> iam.Role:
    return iam.Role(
        c.TASK_ROLE,
        DependsOn=[ECS_SERVICE_LINKED_ROLE_READY],
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
                                If(c.INGEST_BY_STOW, c.stowed_copy_arn(), NoValue),
                            ],
                        )
                    ],
                ),
            ),
            # Stow mode: each instance goes to the data store by StoreDICOM (POST .../studies), and to no other.
            If(
                c.INGEST_BY_STOW,
                iam.Policy(
                    PolicyName="store-instances-in-healthimaging",
                    PolicyDocument=PolicyDocument(
                        Version="2012-10-17",
                        Statement=[
                            Statement(Effect=Allow, Action=[medical_imaging.StoreDICOM], Resource=[c.datastore_arn()])
                        ],
                    ),
                ),
                NoValue,
            ),
            # Stow mode with KmsKeyArn: HealthImaging uses the data store's key on the task's StoreDICOM calls
            # (common.DATA_STORE_KEY), through HealthImaging only.
            c.kms_key_policy("use-data-store-key", [c.DATA_STORE_KEY], condition=c.STOWS_WITH_KMS_KEY),
            # Multipart uploads under SSE-KMS need Decrypt as well as GenerateDataKey. Storage commitment reads and
            # writes the commitment table and reads the instance table, both encrypted with the key when one is given.
            audit.task_policy(),
            c.kms_key_policy(
                "encrypt-with-bucket-key",
                [c.KeyUse("s3", (kms.GenerateDataKey, kms.Decrypt)), c.KeyUse("dynamodb", (kms.Decrypt,))],
            ),
        ],
    )


def container_definition() -> ecs.ContainerDefinition:
    return ecs.ContainerDefinition(
        Name=CONTAINER_NAME,
        Image=release.image_uri(),
        Essential=True,
        User=SCP_USER,
        ReadonlyRootFilesystem=True,
        Privileged=False,
        StopTimeout=c.STOP_TIMEOUT_SECONDS,
        LinuxParameters=ecs.LinuxParameters(
            InitProcessEnabled=True,
            Capabilities=ecs.KernelCapabilities(Drop=["ALL"]),
        ),
        MountPoints=[ecs.MountPoint(SourceVolume=SCRATCH_VOLUME, ContainerPath=SCRATCH_PATH, ReadOnly=False)],
        PortMappings=[ecs.PortMapping(ContainerPort=Ref(p.SCP_PORT), Protocol="tcp")],
        Environment=[ecs.Environment(Name=name, Value=value) for name, value in CONTAINER_ENVIRONMENT.items()],
        Secrets=audit.container_secrets(),
        LogConfiguration=ecs.LogConfiguration(
            LogDriver="awslogs",
            Options={
                "awslogs-group": Ref(c.SCP_LOG_GROUP),
                "awslogs-region": Ref("AWS::Region"),
                "awslogs-stream-prefix": CONTAINER_NAME,
                # A throttled log stream must not stall the DICOM receive path.
                "mode": "non-blocking",
                "max-buffer-size": "25m",
            },
        ),
    )


def task_definition() -> ecs.TaskDefinition:
    return ecs.TaskDefinition(
        TASK_DEFINITION,
        RequiresCompatibilities=["FARGATE"],
        NetworkMode="awsvpc",
        Cpu=Ref(p.TASK_CPU),
        Memory=Ref(p.TASK_MEMORY_LIMIT),
        EphemeralStorage=ecs.EphemeralStorage(SizeInGiB=Ref(p.TASK_EPHEMERAL_STORAGE_GIB)),
        RuntimePlatform=ecs.RuntimePlatform(OperatingSystemFamily="LINUX", CpuArchitecture="X86_64"),
        ExecutionRoleArn=GetAtt(EXECUTION_ROLE, "Arn"),
        TaskRoleArn=GetAtt(c.TASK_ROLE, "Arn"),
        Volumes=[ecs.Volume(Name=SCRATCH_VOLUME)],
        ContainerDefinitions=[container_definition()],
    )


def service() -> ecs.Service:
    return ecs.Service(
        c.SERVICE,
        # The target group must be attached to the load balancer (via the listener) before the service.
        DependsOn=[c.LISTENER],
        Cluster=Ref(c.CLUSTER),
        TaskDefinition=Ref(TASK_DEFINITION),
        LaunchType="FARGATE",
        PlatformVersion="LATEST",
        DesiredCount=Ref(p.TASK_DESIRED_COUNT),
        HealthCheckGracePeriodSeconds=60,
        PropagateTags="SERVICE",
        EnableECSManagedTags=True,
        DeploymentConfiguration=ecs.DeploymentConfiguration(
            MinimumHealthyPercent=100,
            MaximumPercent=launch.DEPLOYMENT_MAXIMUM_PERCENT,
            DeploymentCircuitBreaker=ecs.DeploymentCircuitBreaker(Enable=True, Rollback=True),
        ),
        NetworkConfiguration=ecs.NetworkConfiguration(
            AwsvpcConfiguration=ecs.AwsvpcConfiguration(
                AssignPublicIp="DISABLED",
                Subnets=Ref(p.PRIVATE_SUBNET_IDS),
                SecurityGroups=If(
                    c.HAS_EXTRA_TASK_SG,
                    [GetAtt(c.TASK_SECURITY_GROUP, "GroupId"), Ref(p.SECURITY_GROUP_ID)],
                    [GetAtt(c.TASK_SECURITY_GROUP, "GroupId")],
                ),
            )
        ),
        LoadBalancers=[
            ecs.LoadBalancer(
                ContainerName=CONTAINER_NAME,
                ContainerPort=Ref(p.SCP_PORT),
                TargetGroupArn=Ref(c.TARGET_GROUP),
            )
        ],
    )


def scalable_target() -> aas.ScalableTarget:
    return aas.ScalableTarget(
        c.SCALABLE_TARGET,
        ServiceNamespace="ecs",
        ScalableDimension="ecs:service:DesiredCount",
        ResourceId=Sub("service/${Cluster}/${Service}", Cluster=Ref(c.CLUSTER), Service=GetAtt(c.SERVICE, "Name")),
        MinCapacity=Ref(p.TASK_DESIRED_COUNT),
        MaxCapacity=Ref(p.AUTOSCALE_MAX_CAPACITY),
    )


def cpu_scaling_policy() -> aas.ScalingPolicy:
    return aas.ScalingPolicy(
        "ScpCpuScalingPolicy",
        PolicyName=Sub("${AWS::StackName}-scp-cpu"),
        PolicyType="TargetTrackingScaling",
        ScalingTargetId=Ref(c.SCALABLE_TARGET),
        TargetTrackingScalingPolicyConfiguration=aas.TargetTrackingScalingPolicyConfiguration(
            TargetValue=50.0,
            ScaleInCooldown=60,
            ScaleOutCooldown=60,
            PredefinedMetricSpecification=aas.PredefinedMetricSpecification(
                PredefinedMetricType="ECSServiceAverageCPUUtilization"
            ),
        ),
    )
