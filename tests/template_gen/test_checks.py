"""cfn-lint and checkov on the rendered template, and the parameter table's completeness."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cfnlint.api import lint
from cfnlint.config import ManualArgs

from template_gen.parameters import HEALTHIMAGING_REGIONS, PARAMETERS

CHECKOV = Path(sys.executable).parent / "checkov"


def test_cfn_lint_finds_nothing_in_the_healthimaging_regions(rendered: str) -> None:
    # I3042: ARNs with a hard-coded partition, region or account.
    matches = lint(rendered, config=ManualArgs(regions=list(HEALTHIMAGING_REGIONS), include_checks=["I3042"]))
    assert [str(m) for m in matches] == []


def test_every_parameter_is_grouped_labelled_and_described(template: dict[str, Any]) -> None:
    interface = template["Metadata"]["AWS::CloudFormation::Interface"]
    grouped = [name for group in interface["ParameterGroups"] for name in group["Parameters"]]
    assert sorted(grouped) == sorted(template["Parameters"])
    assert len(grouped) == len(set(grouped))
    assert set(interface["ParameterLabels"]) == set(template["Parameters"])
    assert all(label["default"].strip() for label in interface["ParameterLabels"].values())
    assert all(p["Description"].strip() for p in template["Parameters"].values())
    assert len(PARAMETERS) == len(template["Parameters"])


def _referenced_names(node: object) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref" and isinstance(value, str):
                found.add(value)
            elif key == "Fn::Sub":
                text = value if isinstance(value, str) else value[0]
                found |= set(re.findall(r"\$\{([A-Za-z0-9:]+)\}", text))
            found |= _referenced_names(value)
    elif isinstance(node, list):
        for item in node:
            found |= _referenced_names(item)
    return found


def test_every_parameter_is_used(template: dict[str, Any]) -> None:
    used = _referenced_names([template["Resources"], template["Conditions"], template["Rules"], template["Outputs"]])
    assert set(template["Parameters"]) - used == set()


@pytest.fixture(scope="module")
def checkov_report(committed_path: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [
            str(CHECKOV),
            "--file",
            str(committed_path),
            "--framework",
            "cloudformation",
            "--skip-download",
            "--output",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        # Offline: no PyPI version check, no download of the platform's guideline mapping.
        env={**os.environ, "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true", "BC_SKIP_MAPPING": "true"},
    )
    assert proc.stdout, proc.stderr
    report = json.loads(proc.stdout)
    return report[0] if isinstance(report, list) else report


def test_checkov_fails_nothing(checkov_report: dict[str, Any]) -> None:
    failed = checkov_report["results"]["failed_checks"]
    assert [(f["check_id"], f["resource"]) for f in failed] == []
    assert checkov_report["summary"]["parsing_errors"] == 0
    assert checkov_report["summary"]["passed"] > 100


def test_every_checkov_skip_says_why(checkov_report: dict[str, Any], template: dict[str, Any]) -> None:
    for skipped in checkov_report["results"]["skipped_checks"]:
        assert skipped.get("check_result", {}).get("suppress_comment", "").strip(), skipped["check_id"]
    for name, resource in template["Resources"].items():
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", []):
            assert re.fullmatch(r"CKV_AWS_\d+", skip["id"]), name
            assert len(skip["comment"]) > 20, (name, skip["id"])
