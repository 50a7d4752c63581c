"""Rules: checks CloudFormation runs on the parameters before it creates anything."""

from __future__ import annotations

from typing import Any

from troposphere import And, Equals, Not, Or, Ref, Template

from template_gen import parameters as p
from template_gen.parameters import FARGATE_CPU_MEMORY, HEALTHIMAGING_REGIONS

SUBNET_PARAMETERS = (p.PRIVATE_SUBNET_IDS, p.LOAD_BALANCER_SUBNET_IDS)


def add_rules(template: Template) -> None:
    template.add_rule(
        "HealthImagingRegion",
        {
            "Assertions": [
                {
                    "Assert": {"Fn::Contains": [list(HEALTHIMAGING_REGIONS), Ref("AWS::Region")]},
                    "AssertDescription": "AWS HealthImaging runs only in " + ", ".join(HEALTHIMAGING_REGIONS),
                }
            ]
        },
    )
    template.add_rule(
        "SubnetsInTheVpc",
        {
            "Assertions": [
                {
                    # Fn::ValueOf per parameter: AWS documents it for list parameters; Fn::ValueOfAll's examples
                    # name single-value types only.
                    "Assert": And(
                        *(
                            {"Fn::EachMemberEquals": [{"Fn::ValueOf": [parameter, "VpcId"]}, Ref(p.VPC_ID)]}
                            for parameter in SUBNET_PARAMETERS
                        )
                    ),
                    "AssertDescription": "Every subnet (PrivateSubnetIDs, LoadBalancerSubnetIDs) must belong to VpcID",
                }
            ]
        },
    )
    template.add_rule(
        "LoadBalancerCoversTaskZones",
        {
            "Assertions": [
                {
                    "Assert": {
                        "Fn::EachMemberIn": [
                            _subnet_zones(p.PRIVATE_SUBNET_IDS),
                            _subnet_zones(p.LOAD_BALANCER_SUBNET_IDS),
                        ]
                    },
                    "AssertDescription": "LoadBalancerSubnetIDs must include a subnet in every Availability Zone of "
                    "PrivateSubnetIDs: the load balancer does not route to tasks in a zone it is not in",
                }
            ]
        },
    )
    template.add_rule(
        "NoClearTextDicomFromTheInternet",
        {
            # Whatever PeerCIDR1-3 say: no comparison of CIDR text can tell "the internet" (0.0.0.0/1 plus
            # 128.0.0.0/1 is all of it, and so is any wide block in practice). The deployer says so in words.
            "RuleCondition": And(
                Equals(Ref(p.LOAD_BALANCER_SCHEME), "internet-facing"), Equals(Ref(p.TLS_CERTIFICATE_ARN), "")
            ),
            "Assertions": [
                {
                    "Assert": Equals(Ref(p.ALLOW_CLEAR_TEXT_DICOM_FROM_THE_INTERNET), "true"),
                    "AssertDescription": "An internet-facing load balancer without TLSCertificateARN carries "
                    "patient data in clear text over the internet: give TLSCertificateARN, choose the internal "
                    "LoadBalancerScheme (senders over VPN or Direct Connect), or, knowingly, set "
                    "AllowClearTextDicomFromTheInternet to true",
                }
            ],
        },
    )
    template.add_rule(
        "CommitmentPeersHaveANetwork",
        {
            "RuleCondition": Not(Equals(Ref(p.COMMITMENT_PEERS), "")),
            "Assertions": [
                {
                    "Assert": Not(Equals(Ref(p.COMMITMENT_PEERS_CIDR), "")),
                    "AssertDescription": "CommitmentPeers needs CommitmentPeersCIDR, the network of its hosts: "
                    "the SCP tasks may connect to nothing else outside HTTPS, so reports would never leave",
                }
            ],
        },
    )
    _add_audit_repository_rules(template)
    for cpu, memories in FARGATE_CPU_MEMORY.items():
        template.add_rule(
            f"FargateMemoryFor{cpu}Cpu",
            {
                "RuleCondition": Equals(Ref(p.TASK_CPU), cpu),
                "Assertions": [
                    {
                        "Assert": {"Fn::Contains": [[str(m) for m in memories], Ref(p.TASK_MEMORY_LIMIT)]},
                        "AssertDescription": f"With {cpu} CPU units, TaskMemoryLimit must be one of "
                        + ", ".join(str(m) for m in memories),
                    }
                ],
            },
        )


def _add_audit_repository_rules(template: Template) -> None:
    url, cidr = Ref(p.AUDIT_SYSLOG_URL), Ref(p.AUDIT_SYSLOG_CIDR)
    cert, key = Ref(p.AUDIT_SYSLOG_CERT_SECRET_ARN), Ref(p.AUDIT_SYSLOG_KEY_SECRET_ARN)
    secrets = (Ref(p.AUDIT_SYSLOG_CA_SECRET_ARN), cert, key)
    template.add_rule(
        "AuditRepositoryHasANetwork",
        {
            "RuleCondition": Not(Equals(url, "")),
            "Assertions": [
                {
                    "Assert": Not(Equals(cidr, "")),
                    "AssertDescription": "AuditSyslogURL needs AuditSyslogCIDR, the network of the audit "
                    "repository: the SCP tasks may connect to nothing else outside HTTPS, so no message would leave",
                }
            ],
        },
    )
    template.add_rule(
        "AuditClientCertificateHasItsKey",
        {
            "RuleCondition": Or(Not(Equals(cert, "")), Not(Equals(key, ""))),
            "Assertions": [
                {
                    "Assert": And(Not(Equals(cert, "")), Not(Equals(key, ""))),
                    "AssertDescription": "AuditSyslogCertSecretArn and AuditSyslogKeySecretArn go together: a "
                    "client certificate needs its key",
                }
            ],
        },
    )
    template.add_rule(
        "AuditSecretsNeedARepository",
        {
            "RuleCondition": Or(*(Not(Equals(secret, "")) for secret in secrets)),
            "Assertions": [
                {
                    "Assert": Not(Equals(url, "")),
                    "AssertDescription": "The audit repository's secrets are for AuditSyslogURL: give it too",
                }
            ],
        },
    )


def _subnet_zones(parameter: str) -> dict[str, Any]:
    return {"Fn::ValueOf": [parameter, "AvailabilityZone"]}
