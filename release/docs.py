"""Generated parts of the documents, from template_gen (never copied by hand):

- docs/deployment.md: the parameter table, from template_gen's parameter table; the supported regions, from
  dicom_store_contract.limits; the operations section (the dashboard's layout, the alarms, the SCP's metrics) from
  the template's dashboard body and template_gen.monitoring;
- docs/security.md: the IAM roles and what each may do, from the template's roles;
- docs/architecture.dot / .svg: the stack's resources and the references between them (graphviz);
- docs/conformance.md: the transfer syntaxes the SCP accepts and what AHI does with each, from
  dicom_store_scp.transfer_syntaxes;
- docs/contracts.md: the storage layout, the manifest's fields and an example, the limits table, from
  dicom_store_contract.

Each generated block sits between ``<!-- generated:NAME -->`` and ``<!-- end generated:NAME -->``; the prose
around it is written by hand. ``make docs`` rewrites the blocks and the picture; a test fails when a
committed document differs from a fresh generation.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from release import project
from template_gen.intrinsics import Evaluator, references, sub_parts

DOCS = project.ROOT / "docs"
DEPLOYMENT = DOCS / "deployment.md"
SECURITY = DOCS / "security.md"
ARCHITECTURE_DOT = DOCS / "architecture.dot"
ARCHITECTURE_SVG = DOCS / "architecture.svg"
CONTRACTS = DOCS / "contracts.md"
CONFORMANCE = DOCS / "conformance.md"
ASL_PATH = project.ROOT / "statemachine" / "import_workflow.asl.json"


def template_dict() -> dict[str, Any]:
    from template_gen.template import build_template

    result: dict[str, Any] = build_template(ASL_PATH.read_text(encoding="utf-8")).to_dict()
    return result


# --- blocks ------------------------------------------------------------------------------------------------


def fill(text: str, name: str, content: str) -> str:
    """``text`` with the block ``name`` replaced by ``content``."""
    begin, end = f"<!-- generated:{name} (make docs; do not edit) -->", f"<!-- end generated:{name} -->"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise ValueError(f"no generated:{name} block")
    return pattern.sub(lambda _: f"{begin}\n{content.rstrip()}\n{end}", text)


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _code(value: object) -> str:
    # A pattern or value in backticks, its pipes escaped for the table (GitHub honours \| inside code spans).
    return f"`{_cell(value)}`"


def _constraint(constraints: dict[str, Any]) -> str:
    if "AllowedValues" in constraints:
        return ", ".join(_code(v) for v in constraints["AllowedValues"])
    parts = []
    if "MinValue" in constraints or "MaxValue" in constraints:
        parts.append(f"{constraints.get('MinValue', '')} to {constraints.get('MaxValue', '')}")
    if "MinLength" in constraints or "MaxLength" in constraints:
        parts.append(f"{constraints.get('MinLength', 0)} to {constraints.get('MaxLength', '')} characters")
    if "ConstraintDescription" in constraints:
        parts.append(_cell(constraints["ConstraintDescription"]))
    return "; ".join(parts)


def parameter_table() -> str:
    from template_gen.parameters import GROUP_ORDER, PARAMETERS

    lines = []
    for group in GROUP_ORDER:
        lines += [
            f"#### {group}",
            "",
            "| Parameter | Console label | Default | Allowed | Description |",
            "|---|---|---|---|---|",
        ]
        for p in (p for p in PARAMETERS if p.group == group):
            if p.default is None:
                default = "**required**"
            elif p.default == "":
                default = "(empty)"
            else:
                default = _code(p.default)
            allowed = _constraint(p.constraints) or _code(p.type)
            lines.append(f"| `{p.name}` | {_cell(p.label)} | {default} | {allowed} | {_cell(p.description)} |")
        lines.append("")
    return "\n".join(lines)


# --- readable intrinsic functions --------------------------------------------------------------------------

_PSEUDO = {
    "AWS::Partition": "aws",
    "AWS::Region": "<region>",
    "AWS::AccountId": "<account>",
    "AWS::StackName": "<stack>",
    "AWS::StackId": "<stack-id>",
    "AWS::URLSuffix": "amazonaws.com",
}


class Reader(Evaluator):
    """Renders CloudFormation values as short text (``DicomBucket``, ``<KmsKeyArn>``, ``X.Arn``) and lists the
    resources a value refers to: template_gen's evaluator, rendering instead of computing."""

    def __init__(self, template: dict[str, Any]) -> None:
        super().__init__(template, pseudo=_PSEUDO)
        self.resources: dict[str, Any] = template["Resources"]
        # Buckets named with Fn::Sub appear in ARNs only as that same pattern: recognise it as the bucket.
        self.name_patterns: dict[str, str] = {}
        for name, resource in self.resources.items():
            bucket_name = resource.get("Properties", {}).get("BucketName")
            if isinstance(bucket_name, dict) and "Fn::Sub" in bucket_name:
                self.name_patterns[sub_parts(bucket_name["Fn::Sub"])[0]] = name

    def ref(self, name: str) -> str:
        if name in _PSEUDO:
            return _PSEUDO[name]
        if name in self.resources:
            return name
        return f"<{name}>"

    def get_att(self, logical_id: str, attribute: str) -> str:
        return f"{logical_id}.{attribute}"

    def if_(self, condition: str, when_true: Any, when_false: Any) -> str:
        if when_false == {"Ref": "AWS::NoValue"}:
            return f"{self.text(when_true)} (if {condition})"
        return f"{self.text(when_true)} if {condition}, else {self.text(when_false)}"

    def sub(self, argument: Any) -> str:
        pattern, variables = sub_parts(argument)
        for known, resource in self.name_patterns.items():
            pattern = pattern.replace(known, "${" + resource + "}")
        return str(super().sub([pattern, variables]))

    def join(self, argument: Any) -> str:
        return str(argument[0]).join(self.text(v) for v in argument[1])

    def select(self, argument: Any) -> str:
        return "<derived>"

    def split(self, argument: Any) -> str:
        return "<derived>"

    def text(self, value: Any) -> str:
        if isinstance(value, list):
            return ", ".join(self.text(v) for v in value)
        return str(self.value(value))

    def references(self, value: Any) -> set[str]:
        found = references(value) & set(self.resources)
        text = json.dumps(value)
        return found | {resource for known, resource in self.name_patterns.items() if known in text}


# --- IAM ---------------------------------------------------------------------------------------------------


def _policies(policies: list[Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(policy name, condition or "", document) for each inline policy."""
    found = []
    for policy in policies:
        if "Fn::If" in policy:
            condition, when_true, _ = policy["Fn::If"]
            found.append((when_true["PolicyName"], condition, when_true["PolicyDocument"]))
        else:
            found.append((policy["PolicyName"], "", policy["PolicyDocument"]))
    return found


def iam_table(template: dict[str, Any]) -> str:
    reader = Reader(template)
    lines = [
        "| Role | Assumed by | Policy | Actions | On |",
        "|---|---|---|---|---|",
    ]
    for name, resource in template["Resources"].items():
        if resource["Type"] != "AWS::IAM::Role":
            continue
        properties = resource["Properties"]
        principals = sorted(
            {
                service
                for statement in properties["AssumeRolePolicyDocument"]["Statement"]
                for service in _as_list(statement["Principal"].get("Service", []))
            }
        )
        for managed in properties.get("ManagedPolicyArns", []):
            lines.append(f"| `{name}` | {', '.join(principals)} | managed | {_cell(reader.text(managed))} | |")
        for policy_name, condition, document in _policies(properties.get("Policies", [])):
            label = f"{policy_name} (if {condition})" if condition else policy_name
            for statement in document["Statement"]:
                effect = "" if statement.get("Effect", "Allow") == "Allow" else "**Deny** "
                actions = ", ".join(f"`{a}`" for a in _as_list(statement["Action"]))
                on = "<br>".join(_code(reader.text(r)) for r in _as_list(statement.get("Resource", [])))
                for test, keys in statement.get("Condition", {}).items():
                    on += "".join(f"<br>if {_code(k)} {test} {_code(reader.text(v))}" for k, v in keys.items())
                lines.append(f"| `{name}` | {', '.join(principals)} | {_cell(label)} | {effect}{actions} | {on} |")
    return "\n".join(lines)


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# --- architecture picture ----------------------------------------------------------------------------------

# What the picture shows, grouped as template_gen's modules are. Roles are not drawn: an edge through a role
# (function -> its role -> table) is drawn from the function to the table. Logs, alarms, permissions, policies
# and security groups are left out: they would hide the data path.
CLUSTERS = {
    "AWS::ElasticLoadBalancingV2::LoadBalancer": "Network",
    "AWS::ElasticLoadBalancingV2::Listener": "Network",
    "AWS::ElasticLoadBalancingV2::TargetGroup": "Network",
    "AWS::ECS::Service": "SCP service (ECS Fargate)",
    "AWS::ECS::TaskDefinition": "SCP service (ECS Fargate)",
    "AWS::S3::Bucket": "Storage",
    "AWS::HealthImaging::Datastore": "Storage",
    "AWS::DynamoDB::Table": "Import pipeline",
    "AWS::Lambda::Function": "Import pipeline",
    "AWS::StepFunctions::StateMachine": "Import pipeline",
    "AWS::Events::Rule": "Import pipeline",
    "AWS::SQS::Queue": "Import pipeline",
}
SENDER = "Modality / PACS"


def architecture_dot(template: dict[str, Any]) -> str:
    reader = Reader(template)
    resources = template["Resources"]
    shown = {name for name, r in resources.items() if r["Type"] in CLUSTERS}

    def uses(name: str, seen: frozenset[str] = frozenset()) -> set[str]:
        found = set()
        for target in reader.references(resources[name].get("Properties", {})):
            if target in shown:
                found.add(target)
            elif resources[target]["Type"] == "AWS::IAM::Role" and target not in seen:
                found |= uses(target, seen | {target})
        return found - {name}

    lines = [
        "// Generated by `make docs` (python -m release docs) from template_gen's template; do not edit.",
        "digraph stack {",
        '  graph [rankdir=LR, fontname="Helvetica", fontsize=11, nodesep=0.3, ranksep=0.9,',
        '         label="Arrows: A refers to B in the template (through its IAM role where it has one)", labelloc=b];',
        '  node [shape=box, style="rounded,filled", fillcolor="#f5f7fa", fontname="Helvetica", fontsize=10];',
        '  edge [color="#55606e", arrowsize=0.7, fontname="Helvetica", fontsize=10];',
        f'  "{SENDER}" [shape=box, style="rounded,dashed", fillcolor=white];',
    ]
    for number, cluster in enumerate(dict.fromkeys(CLUSTERS.values())):
        members = sorted(n for n in shown if CLUSTERS[resources[n]["Type"]] == cluster)
        lines.append(f'  subgraph cluster_{number} {{ label="{cluster}"; style=rounded; color="#9aa5b1";')
        for name in members:
            kind = resources[name]["Type"].removeprefix("AWS::")
            condition = resources[name].get("Condition")
            note = f"\\n(if {condition})" if condition else ""
            lines.append(f'    "{name}" [label="{name}\\n{kind}{note}"];')
        lines.append("  }")
    load_balancers = sorted(n for n in shown if resources[n]["Type"] == "AWS::ElasticLoadBalancingV2::LoadBalancer")
    for name in load_balancers:
        lines.append(f'  "{SENDER}" -> "{name}" [label="DICOM C-STORE", style=bold];')
    for name in sorted(shown):
        for target in sorted(uses(name)):
            lines.append(f'  "{name}" -> "{target}";')
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_svg(dot_source: Path, svg: Path) -> bool:
    """Render with graphviz's ``dot``; False when it is not installed."""
    dot = shutil.which("dot")
    if dot is None:
        return False
    svg.write_bytes(subprocess.run([dot, "-Tsvg", str(dot_source)], check=True, capture_output=True).stdout)
    return True


# --- contracts.md: from dicom_store_contract --------------------------------------------------------------

EXAMPLE_BATCH_ID = "20261123T190501Z-0f6c1d2e3a4b4c5d8e9f00112233aabb"


def layout_table() -> str:
    from dicom_store_contract import layout

    batch = "<batch-id>"
    instance = layout.instance_key("<prefix>", batch, "<StudyInstanceUID>", "<SeriesInstanceUID>", "<SOPInstanceUID>")
    rows = [
        "| key | what |",
        "|---|---|",
        f"| `{instance}` | one DICOM Part 10 file, dataset bytes exactly as received, File Meta Information added |",
        f"| `{layout.manifest_key('<prefix>', batch)}` "
        "| the batch manifest, written last: its presence means the batch is complete |",
    ]
    return (
        "\n".join(rows)
        + f"\n\n`<batch-id>` is `{layout.BATCH_ID_FORM}`: the UTC time the batch opened, then a uuid4.\n"
    )


def manifest_section() -> str:
    from datetime import UTC, datetime

    from dicom_store_contract import layout, manifest

    study, series, sop = "1.2.3", "1.2.3.4", "1.2.3.4.5"
    example = manifest.Manifest.build(
        "",
        EXAMPLE_BATCH_ID,
        (
            manifest.Instance(
                key=layout.instance_key("", EXAMPLE_BATCH_ID, study, series, sop),
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                sop_instance_uid=sop,
                study_instance_uid=study,
                series_instance_uid=series,
                study_date="20261123",
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                size=525312,
                checksum="AAAAAAAAAAA=",
                checksum_algorithm=manifest.ChecksumAlgorithm.CRC64NVME,
            ),
        ),
        started_at=datetime(2026, 11, 23, 19, 5, 1, 123456, tzinfo=UTC),
        ended_at=datetime(2026, 11, 23, 19, 5, 9, 654321, tzinfo=UTC),
        end_reason=manifest.EndReason.RELEASED,
        calling_ae="MODALITY1",
        called_ae="STORESCP",
        peer_address="10.0.1.23",
        peer_port=50123,
    )
    return (
        f"Version {manifest.MANIFEST_VERSION}. Example:\n\n```json\n{example.encode().decode()}\n```\n\n"
        f"Fields of the manifest:\n\n{manifest.fields_table(manifest.MANIFEST_FIELDS)}\n"
        f"Fields of each entry of `instances`:\n\n{manifest.fields_table(manifest.INSTANCE_FIELDS)}\n"
        "Version 1, still read and no longer written, differs only there: in place of `checksum` and "
        f"`checksumAlgorithm` each entry has\n\n{manifest.fields_table((manifest.V1_SHA256,))}"
    )


def regions_list() -> str:
    """The supported regions, from the limits module's table (AWS HealthImaging's endpoints page)."""
    from dicom_store_contract import limits

    names = [f"{region.name} `{region.code}`" for region in limits.HEALTHIMAGING_REGION_TABLE]
    return (
        f"{', '.join(names[:-1])} or {names[-1]} ([AWS HealthImaging endpoints]({limits.ENDPOINTS_PAGE})). "
        "The template refuses any other region.\n"
    )


def limits_table() -> str:
    from dicom_store_contract import limits

    return limits.table()


def workflow_placeholders() -> str:
    """The ASL's DefinitionSubstitutions, from template_gen's function table."""
    from template_gen.pipeline import definition_substitutions

    return ", ".join(f"`${{{name}}}`" for name in definition_substitutions()) + "."


def contracts_document() -> str:
    text = CONTRACTS.read_text(encoding="utf-8")
    for name, content in (
        ("layout", layout_table()),
        ("manifest", manifest_section()),
        ("limits", limits_table()),
        ("workflow-placeholders", workflow_placeholders()),
    ):
        text = fill(text, name, content)
    return text


# --- deployment.md: operations, from the template's dashboard and template_gen's alarms ---------------------

_BOX = 36  # characters per 8 dashboard columns


def dashboard_picture(template: dict[str, Any]) -> str:
    """The dashboard's layout as text: its headings and a box per graph, placed as the body places them."""
    import json
    import textwrap

    body = json.loads(template["Resources"]["ScpDashboard"]["Properties"]["DashboardBody"]["Fn::Sub"][0])
    lines: list[str] = []
    rows: dict[int, list[dict[str, Any]]] = {}
    for widget in body["widgets"]:
        rows.setdefault(widget["y"], []).append(widget)
    for y in sorted(rows):
        widgets = sorted(rows[y], key=lambda w: w["x"])
        if widgets[0]["type"] == "text":
            lines += ["", widgets[0]["properties"]["markdown"].lstrip("# ")]
            continue
        # A box as wide as its widget (8 columns: _BOX characters, the gaps between boxes included).
        widths = [w["width"] * _BOX // 8 + (w["width"] // 8 - 1) for w in widgets]
        cells = [textwrap.wrap(w["properties"]["title"], width - 4) for w, width in zip(widgets, widths, strict=True)]
        depth = max(len(cell) for cell in cells)
        edge = " ".join("+" + "-" * (width - 2) + "+" for width in widths)
        lines.append(edge)
        for index in range(depth):
            lines.append(
                " ".join(
                    f"| {(cell[index] if index < len(cell) else ''):<{width - 4}} |"
                    for cell, width in zip(cells, widths, strict=True)
                )
            )
        lines.append(edge)
    return "```\n" + "\n".join(lines).strip("\n") + "\n```"


def operations_section(template: dict[str, Any]) -> str:
    from dicom_store_contract import metrics

    from template_gen.monitoring import alarms

    parts = [
        "The dashboard (`<stack>-dicom-store-scp`), from its body in the template:",
        "",
        dashboard_picture(template),
        "",
        "| Alarm | What it means | Check first |",
        "|---|---|---|",
    ]
    for alarm in alarms():
        parts.append(f"| `{alarm.logical_id}` | {_cell(alarm.means)} | {_cell(alarm.check_first)} |")
    parts += [
        "",
        f"The SCP's metrics (namespace `{metrics.NAMESPACE}`, dimension `{metrics.SERVICE}` = the stack name):",
        "",
        "| Metric | Unit | What it counts | Also by |",
        "|---|---|---|---|",
    ]
    for metric in metrics.SCP_METRICS:
        by = f"`{metric.by}`" if metric.by else ""
        parts.append(f"| `{metric.name}` | {metric.unit} | {_cell(metric.meaning)} | {by} |")
    return "\n".join(parts)


def conformance_document() -> str:
    from dicom_store_scp import transfer_syntaxes

    return fill(CONFORMANCE.read_text(encoding="utf-8"), "transfer-syntaxes", transfer_syntaxes.table())


# --- all of it ---------------------------------------------------------------------------------------------


def generated_documents() -> dict[Path, str]:
    """Every generated text file as it should be committed (the SVG apart: graphviz renders it)."""
    template = template_dict()
    return {
        DEPLOYMENT: fill(
            fill(
                fill(DEPLOYMENT.read_text(encoding="utf-8"), "parameters", parameter_table()), "regions", regions_list()
            ),
            "operations",
            operations_section(template),
        ),
        SECURITY: fill(SECURITY.read_text(encoding="utf-8"), "iam-roles", iam_table(template)),
        ARCHITECTURE_DOT: architecture_dot(template),
        CONTRACTS: contracts_document(),
        CONFORMANCE: conformance_document(),
    }


def write_all() -> list[str]:
    written = []
    for path, text in generated_documents().items():
        path.write_text(text, encoding="utf-8")
        written.append(str(path.relative_to(project.ROOT)))
    if render_svg(ARCHITECTURE_DOT, ARCHITECTURE_SVG):
        written.append(str(ARCHITECTURE_SVG.relative_to(project.ROOT)))
    else:
        written.append("(graphviz's dot is not installed: docs/architecture.svg not rendered)")
    return written
