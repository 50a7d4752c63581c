"""The template's SCP task definition against the SCP's configuration table.

Every variable the task sets must be one the SCP reads, and every value a deployer can choose within the
parameters' constraints must be one the SCP starts with (a value it refuses exits 2, and ECS restarts the task
until the deployment circuit breaker rolls the stack back).
"""

from __future__ import annotations

from typing import Any

import pytest
from dicom_store_scp.config import SETTINGS, ConfigError, load
from support.cfn import Deployment, refs_to_parameters

TASK_DEFINITION = "ScpTaskDefinition"
KMS_KEY_ARN = "arn:aws:kms:us-east-1:123456789012:key/0f6c1d2e-3a4b-4c5d-8e9f-00112233aabb"


def test_the_task_sets_only_variables_the_scp_reads(template: dict[str, Any]) -> None:
    environment = Deployment(template).container_environment(TASK_DEFINITION)
    assert set(environment) - {setting.env for setting in SETTINGS} == set()


def _choices(parameter: dict[str, Any]) -> list[str]:
    """The values a deployer can give ``parameter``: its default, allowed values and range edges."""
    values = {str(parameter.get("Default", ""))}
    values |= {str(v) for v in parameter.get("AllowedValues", [])}
    if "MinValue" in parameter:
        low = int(parameter["MinValue"])
        values |= {str(low), str(low + 1)}
    if "MaxValue" in parameter:
        high = int(parameter["MaxValue"])
        values |= {str(high), str(high - 1)}
    return sorted(values)


def _cases(template: dict[str, Any]) -> list[tuple[str, str]]:
    (container,) = template["Resources"][TASK_DEFINITION]["Properties"]["ContainerDefinitions"]
    used = set().union(*(refs_to_parameters(template, e["Value"]) for e in container["Environment"]))
    return [(name, value) for name in sorted(used) for value in _choices(template["Parameters"][name])]


def test_every_parameter_value_the_template_accepts_starts_the_scp(template: dict[str, Any]) -> None:
    refused = []
    for name, value in _cases(template):
        environment = Deployment(template, {name: value}).container_environment(TASK_DEFINITION)
        try:
            load(argv=[], environ=environment)
        except ConfigError as error:
            refused.append(f"{name}={value!r}: {error}")
    assert not refused, "\n".join(refused)


@pytest.mark.parametrize("kms_key", ["", KMS_KEY_ARN])
def test_the_default_deployment_configures_s3_storage(template: dict[str, Any], kms_key: str) -> None:
    deployment = Deployment(template, {"KmsKeyArn": kms_key, "DICOMPrefix": "site-a/"})
    config = load(argv=[], environ=deployment.container_environment(TASK_DEFINITION))
    assert config.dicom_bucket == deployment.output("DICOMBucketName")
    assert config.dicom_prefix == "site-a/"
    assert (config.s3_sse, config.s3_kms_key_id) == (("aws:kms", KMS_KEY_ARN) if kms_key else ("AES256", ""))
    assert config.port == int(template["Parameters"]["SCPPort"]["Default"])
