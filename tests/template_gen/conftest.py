"""Fixtures of the template tests: the ASL text, a fresh render (text and parsed), the committed render."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from template_gen import build_template, render

ROOT = Path(__file__).resolve().parents[2]
ASL_PATH = ROOT / "statemachine" / "import_workflow.asl.json"
COMMITTED_TEMPLATE = ROOT / "templates" / "dicom-store-scp.yaml"


@pytest.fixture(scope="session")
def asl_text() -> str:
    return ASL_PATH.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def rendered(asl_text: str) -> str:
    return render(build_template(asl_text))


@pytest.fixture(scope="session")
def template(asl_text: str) -> dict[str, Any]:
    return json.loads(build_template(asl_text).to_json())


@pytest.fixture(scope="session")
def committed() -> str:
    return COMMITTED_TEMPLATE.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def committed_path() -> Path:
    return COMMITTED_TEMPLATE
