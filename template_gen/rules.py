"""Rules: checks CloudFormation runs on the parameters before it creates anything."""

from __future__ import annotations

from troposphere import Equals, Ref, Template

from template_gen.parameters import FARGATE_CPU_MEMORY, HEALTHIMAGING_REGIONS


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
    for cpu, memories in FARGATE_CPU_MEMORY.items():
        template.add_rule(
            f"FargateMemoryFor{cpu}Cpu",
            {
                "RuleCondition": Equals(Ref("TaskCPU"), cpu),
                "Assertions": [
                    {
                        "Assert": {"Fn::Contains": [[str(m) for m in memories], Ref("TaskMemoryLimit")]},
                        "AssertDescription": f"With {cpu} CPU units, TaskMemoryLimit must be one of "
                        + ", ".join(str(m) for m in memories),
                    }
                ],
            },
        )
