"""The release template: template_gen's template naming the published artifacts (its ReleaseArtifacts mapping),
with the version in its Description (the Marketplace listing shows the Description; the version tells deployers
what they run). One template per version serves every supported region."""

from __future__ import annotations

from troposphere import Template

from release import project
from template_gen.release import Artifacts, set_artifacts

ASL_PATH = project.ROOT / "statemachine" / "import_workflow.asl.json"


def release_template(version: str, artifacts: Artifacts) -> Template:
    from template_gen.template import build_template

    template = build_template(ASL_PATH.read_text(encoding="utf-8"))
    set_artifacts(template, artifacts)
    template.set_description(f"{template.description} Version {version}.")
    return template


def release_template_text(version: str, artifacts: Artifacts) -> str:
    from template_gen.template import render

    return render(release_template(version, artifacts))
