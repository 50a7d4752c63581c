"""The rendered template as one deployment would see it: parameters chosen, intrinsics evaluated.

``Deployment`` evaluates Ref, Fn::GetAtt, Fn::Sub, Fn::FindInMap, Fn::Join, Fn::Select, Fn::Split and
Fn::If against values
the test supplies for resources (the names and ARNs of the moto resources standing in for them), so a test
reads a function's environment or a role's policy with the same values the handler sees.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from template_gen import build_template

ROOT = Path(__file__).resolve().parents[2]
ASL_PATH = ROOT / "statemachine" / "import_workflow.asl.json"

ACCOUNT_ID = "123456789012"  # moto's default account
REGION = "us-east-1"
# CloudFormation's stack id ends in a uuid; the template derives the DICOM bucket's name from its first group.
STACK_ID = f"arn:aws:cloudformation:{REGION}:{ACCOUNT_ID}:stack/dicom-scp/0f6c1d2e-3a4b-4c5d-8e9f-00112233aabb"
STACK_NAME = "dicom-scp"

_NO_VALUE = object()


def rendered_template() -> dict[str, Any]:
    return json.loads(build_template(ASL_PATH.read_text(encoding="utf-8")).to_json())


class Unresolved(KeyError):
    """The template refers to something the test gave no value for."""


@dataclass
class Deployment:
    template: dict[str, Any]
    parameters: dict[str, str] = field(default_factory=dict)
    # Ref values of resources (logical id) and GetAtt values ("LogicalId.Attribute").
    resources: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        given = dict(self.parameters)
        self.parameters = {name: str(p.get("Default", "")) for name, p in self.template["Parameters"].items()}
        self.parameters.update(given)
        self.pseudo = {
            "AWS::AccountId": ACCOUNT_ID,
            "AWS::Region": REGION,
            "AWS::Partition": "aws",
            "AWS::StackId": STACK_ID,
            "AWS::StackName": STACK_NAME,
            "AWS::URLSuffix": "amazonaws.com",
        }

    # --- evaluation --------------------------------------------------------------------------------------

    def condition(self, name: str) -> bool:
        return bool(self.value(self.template["Conditions"][name]))

    def _ref(self, name: str) -> str:
        for table in (self.pseudo, self.parameters, self.resources):
            if name in table:
                return table[name]
        if name in self.template["Resources"]:
            return f"{STACK_NAME}-{name}"  # a resource the test has no stand-in for
        raise Unresolved(name)

    def value(self, node: Any) -> Any:
        if isinstance(node, list):
            return [v for v in (self.value(item) for item in node) if v is not _NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) != 1:
            return {k: v for k, v in ((k, self.value(v)) for k, v in node.items()) if v is not _NO_VALUE}
        ((key, arg),) = node.items()
        if key == "Ref":
            return _NO_VALUE if arg == "AWS::NoValue" else self._ref(arg)
        if key == "Fn::GetAtt":
            name = ".".join(arg)
            if name not in self.resources:
                if arg[0] not in self.template["Resources"]:
                    raise Unresolved(name)
                return f"arn:aws:placeholder:{REGION}:{ACCOUNT_ID}:{name}"  # no stand-in: matches nothing real
            return self.resources[name]
        if key == "Fn::Sub":
            text, local = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
            values = {k: self.value(v) for k, v in local.items()}

            def substitute(match: re.Match[str]) -> str:
                name = match.group(1)
                if name in values:
                    return str(values[name])
                if "." in name:
                    return str(self.value({"Fn::GetAtt": name.split(".", 1)}))
                return str(self._ref(name))

            return re.sub(r"\$\{([A-Za-z0-9:._]+)\}", substitute, text)
        if key == "Fn::FindInMap":
            mapping, top, second = (self.value(part) for part in arg)
            return self.template["Mappings"][mapping][top][second]
        if key == "Fn::Join":
            return arg[0].join(str(v) for v in self.value(arg[1]))
        if key == "Fn::Select":
            return self.value(arg[1])[int(arg[0])]
        if key == "Fn::Split":
            return str(self.value(arg[1])).split(arg[0])
        if key == "Fn::If":
            return self.value(arg[1] if self.condition(arg[0]) else arg[2])
        if key == "Fn::Equals":
            return self.value(arg[0]) == self.value(arg[1])
        if key == "Fn::Not":
            return not self.value(arg[0])
        if key == "Condition":
            return self.condition(arg)
        return {key: self.value(arg)}

    # --- reading resources -------------------------------------------------------------------------------

    def resource(self, logical_id: str) -> dict[str, Any]:
        return self.template["Resources"][logical_id]

    def of_type(self, type_: str) -> dict[str, dict[str, Any]]:
        return {
            name: r
            for name, r in self.template["Resources"].items()
            if r["Type"] == type_ and ("Condition" not in r or self.condition(r["Condition"]))
        }

    def output(self, name: str) -> str:
        return str(self.value(self.template["Outputs"][name]["Value"]))

    def lambda_environment(self, logical_id: str) -> dict[str, str]:
        variables = self.resource(logical_id)["Properties"]["Environment"]["Variables"]
        return {name: str(self.value(value)) for name, value in variables.items()}

    def container_environment(self, logical_id: str) -> dict[str, str]:
        (container,) = self.resource(logical_id)["Properties"]["ContainerDefinitions"]
        return {e["Name"]: str(self.value(e["Value"])) for e in container["Environment"]}

    def role_statements(self, role_logical_id: str) -> list[dict[str, Any]]:
        """Every statement of the role's inline policies, with conditions decided and ARNs evaluated."""
        policies = self.value(self.resource(role_logical_id)["Properties"]["Policies"])
        return [s for p in policies for s in p["PolicyDocument"]["Statement"]]

    def role_of(self, logical_id: str, attribute: str = "Role") -> str:
        ref = self.resource(logical_id)["Properties"][attribute]
        assert set(ref) == {"Fn::GetAtt"}, ref
        return str(ref["Fn::GetAtt"][0])


def refs_to_parameters(template: dict[str, Any], node: Any) -> set[str]:
    """The parameters a value depends on: by Ref, by ${...} in Sub, or through an Fn::If's condition."""
    found: set[str] = set()
    if isinstance(node, list):
        for item in node:
            found |= refs_to_parameters(template, item)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref" and value in template["Parameters"]:
                found.add(value)
            elif key == "Fn::Sub":
                text = value if isinstance(value, str) else value[0]
                found |= set(re.findall(r"\$\{([A-Za-z0-9]+)\}", text)) & set(template["Parameters"])
                found |= refs_to_parameters(template, value)
            elif key == "Fn::If":
                found |= refs_to_parameters(template, template["Conditions"][value[0]])
                found |= refs_to_parameters(template, value[1:])
            else:
                found |= refs_to_parameters(template, value)
    return found
