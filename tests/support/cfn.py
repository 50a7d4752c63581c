"""The rendered template as one deployment would see it: parameters chosen, intrinsics evaluated.

``Deployment`` is template_gen.intrinsics' evaluator with the values of one test deployment: the pseudo
parameters of moto's account, and for resources the names and ARNs of the moto resources standing in for them,
so a test reads a function's environment or a role's policy with the same values the handler sees.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from template_gen import build_template
from template_gen.intrinsics import Evaluator, Unresolved, references

ROOT = Path(__file__).resolve().parents[2]
ASL_PATH = ROOT / "statemachine" / "import_workflow.asl.json"

ACCOUNT_ID = "123456789012"  # moto's default account
REGION = "us-east-1"
# CloudFormation's stack id ends in a uuid; the template derives the DICOM bucket's name from its first group.
STACK_ID = f"arn:aws:cloudformation:{REGION}:{ACCOUNT_ID}:stack/dicom-scp/0f6c1d2e-3a4b-4c5d-8e9f-00112233aabb"
STACK_NAME = "dicom-scp"
PSEUDO = {
    "AWS::AccountId": ACCOUNT_ID,
    "AWS::Region": REGION,
    "AWS::Partition": "aws",
    "AWS::StackId": STACK_ID,
    "AWS::StackName": STACK_NAME,
    "AWS::URLSuffix": "amazonaws.com",
}

__all__ = ["ACCOUNT_ID", "REGION", "Deployment", "Unresolved", "refs_to_parameters", "rendered_template"]


def rendered_template() -> dict[str, Any]:
    return json.loads(build_template(ASL_PATH.read_text(encoding="utf-8")).to_json())


# GetAtt attributes whose value is an id of a known form (AWS::HealthImaging::Datastore's DatastoreId: 32 lowercase
# letters and digits), built from a digest of the name.
_ATTRIBUTE_SHAPES: dict[str, Callable[[str], str]] = {"DatastoreId": lambda digest: digest[:32]}


class Deployment(Evaluator):
    """``resources``: Ref values of resources (logical id) and GetAtt values ("LogicalId.Attribute"); a resource
    without one is given a placeholder that matches nothing real."""

    def __init__(
        self,
        template: dict[str, Any],
        parameters: dict[str, Any] | None = None,
        resources: dict[str, str] | None = None,
        aws_values: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.resources = dict(resources or {})
        super().__init__(
            template,
            parameters,
            pseudo=PSEUDO,
            resolve=self._resource_ref,
            attribute=self._resource_attribute,
            aws_values=aws_values,
        )

    def _resource_ref(self, name: str) -> str:
        if name in self.resources:
            return self.resources[name]
        if name in self.template["Resources"]:
            return f"{STACK_NAME}-{name}"
        raise Unresolved(name)

    def _resource_attribute(self, logical_id: str, attribute: str) -> str:
        name = f"{logical_id}.{attribute}"
        if name in self.resources:
            return self.resources[name]
        if logical_id not in self.template["Resources"]:
            raise Unresolved(name)
        if attribute in _ATTRIBUTE_SHAPES:
            # An attribute that is an id, not an ARN: a value of its real shape, so what reads it can check it.
            return _ATTRIBUTE_SHAPES[attribute](hashlib.sha256(name.encode()).hexdigest())
        return f"arn:aws:placeholder:{REGION}:{ACCOUNT_ID}:{name}"

    # --- reading resources -------------------------------------------------------------------------------

    def resource(self, logical_id: str) -> dict[str, Any]:
        return self.template["Resources"][logical_id]

    def of_type(self, type_: str) -> dict[str, dict[str, Any]]:
        return {
            name: r
            for name, r in self.template["Resources"].items()
            if r["Type"] == type_ and ("Condition" not in r or self.condition(r["Condition"]))
        }

    def decided(self, type_: str | None = None) -> dict[str, dict[str, Any]]:
        """The resources this deployment creates (of ``type_``), their Fn::If decided, other functions as written."""
        return {
            name: self.decide(r)
            for name, r in self.template["Resources"].items()
            if (type_ is None or r["Type"] == type_) and ("Condition" not in r or self.condition(r["Condition"]))
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
    return references(node, template["Conditions"]) & set(template["Parameters"])
