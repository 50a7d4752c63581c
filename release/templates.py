"""The release template: template_gen's template with the published artifacts as defaults and the version in
its Description (the Marketplace listing shows the Description; the version tells deployers what they run)."""

from __future__ import annotations

from troposphere import Template

from release import project

ASL_PATH = project.ROOT / "statemachine" / "import_workflow.asl.json"
ARTIFACT_PARAMETERS = ("ContainerImageURI", "LambdaArtifactBucket", "LambdaArtifactKey")


def release_template(version: str, image_uri: str, lambda_bucket: str, lambda_key: str) -> Template:
    from template_gen.template import build_template

    template = build_template(ASL_PATH.read_text(encoding="utf-8"))
    defaults = dict(zip(ARTIFACT_PARAMETERS, (image_uri, lambda_bucket, lambda_key), strict=True))
    for name, value in defaults.items():
        template.parameters[name].Default = value
    template.set_description(f"{template.description} Version {version}.")
    return template


def release_template_text(version: str, image_uri: str, lambda_bucket: str, lambda_key: str) -> str:
    from template_gen.template import render

    return render(release_template(version, image_uri, lambda_bucket, lambda_key))
