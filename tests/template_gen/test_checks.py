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

from template_gen.intrinsics import references
from template_gen.parameters import HEALTHIMAGING_REGIONS, PARAMETERS

CHECKOV = Path(sys.executable).parent / "checkov"


CFN_LINT = Path(sys.executable).parent / "cfn-lint"
# Every informational rule; I3042 (ARNs with a hard-coded partition, region or account) also for region and
# account, which it leaves out by default.
CFN_LINT_ARGS = ("--include-checks", "I", "--configure-rule", "I3042:region=true", "I3042:accountId=true")


def cfn_lint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CFN_LINT), *CFN_LINT_ARGS, "--regions", *HEALTHIMAGING_REGIONS, "--", str(path)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_cfn_lint_with_every_informational_rule_finds_nothing_in_every_supported_region(
    committed_path: Path,
) -> None:
    result = cfn_lint(committed_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_cfn_lint_arguments_do_report_informational_findings(tmp_path: Path) -> None:
    # The same command on a template with a hard-coded region and account in an ARN: I3042 as configured.
    template = tmp_path / "t.yaml"
    template.write_text(
        "Resources:\n  Topic:\n    Type: AWS::SNS::Topic\n    Properties:\n      KmsMasterKeyId: !Sub "
        '"arn:${AWS::Partition}:kms:us-east-1:111122223333:key/0f6c1d2e-3a4b-4c5d-8e9f-00112233aabb"\n',
        encoding="utf-8",
    )
    result = cfn_lint(template)
    assert result.returncode != 0
    # Both only with the configuration above: by default I3042 checks the partition alone.
    assert "I3042 ARN in Resource Topic contains hardcoded Region" in result.stdout
    assert "I3042 ARN in Resource Topic contains hardcoded AccountId" in result.stdout


def test_every_parameter_is_grouped_labelled_and_described(template: dict[str, Any]) -> None:
    interface = template["Metadata"]["AWS::CloudFormation::Interface"]
    grouped = [name for group in interface["ParameterGroups"] for name in group["Parameters"]]
    assert sorted(grouped) == sorted(template["Parameters"])
    assert len(grouped) == len(set(grouped))
    assert set(interface["ParameterLabels"]) == set(template["Parameters"])
    assert all(label["default"].strip() for label in interface["ParameterLabels"].values())
    assert all(p["Description"].strip() for p in template["Parameters"].values())
    assert len(PARAMETERS) == len(template["Parameters"])


def test_every_parameter_is_used(template: dict[str, Any]) -> None:
    used = references([template["Resources"], template["Conditions"], template["Rules"], template["Outputs"]])
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
