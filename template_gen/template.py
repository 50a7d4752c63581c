"""``build_template()``: the whole stack, one resource group after another in the order data flows."""

from __future__ import annotations

from troposphere import Template

from template_gen.audit import add_audit
from template_gen.commitment import add_commitment
from template_gen.common import add_conditions
from template_gen.monitoring import add_monitoring
from template_gen.network import add_network
from template_gen.outputs import add_outputs
from template_gen.parameters import add_parameters, interface_metadata
from template_gen.pipeline import add_pipeline
from template_gen.release import DEVELOPMENT, set_artifacts
from template_gen.rules import add_rules
from template_gen.service import add_service
from template_gen.storage import add_storage

DESCRIPTION = (
    "DICOM Store SCP for AWS HealthImaging: a DICOM C-STORE endpoint on ECS Fargate behind a Network Load "
    "Balancer that lands instances in Amazon S3 and imports them into AWS HealthImaging."
)


def build_template(asl_definition: str) -> Template:
    """The stack's template. ``asl_definition`` is the text of statemachine/import_workflow.asl.json."""
    template = Template(Description=DESCRIPTION)
    template.set_version("2010-09-09")
    template.set_metadata(interface_metadata())
    add_parameters(template)
    set_artifacts(template, DEVELOPMENT)
    add_rules(template)
    add_conditions(template)
    add_network(template)
    add_audit(template)
    add_service(template)
    add_storage(template)
    add_commitment(template)
    add_pipeline(template, asl_definition)
    add_monitoring(template)
    add_outputs(template)
    return template


def render(template: Template) -> str:
    return template.to_yaml()
