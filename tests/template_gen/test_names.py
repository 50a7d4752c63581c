"""A logical id (resource, parameter, condition) is written as a string in one template_gen module only.

Every other module refers to it through that module's named constant (``common``'s resource and condition ids,
``parameters``' parameter names): a renamed resource or parameter then changes in one place, not in each
``Ref``, ``GetAtt`` and ``${Name}`` that points at it.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

PACKAGE = Path(__file__).resolve().parents[2] / "template_gen"
_SUB_NAME = re.compile(r"\$\{([A-Za-z0-9]+)(?:\.[A-Za-z0-9.]+)?\}")


def _written(ids: set[str]) -> dict[str, set[str]]:
    """logical id -> the modules holding a string that is it, or names it as ``${Id}`` in a Sub pattern."""
    where: dict[str, set[str]] = defaultdict(set)
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for name in {node.value, *_SUB_NAME.findall(node.value)} & ids:
                    where[name].add(path.name)
    return where


def test_every_logical_id_is_written_in_one_module(template: dict[str, Any]) -> None:
    ids = {name for section in ("Resources", "Parameters", "Conditions") for name in template.get(section, {})}
    twice = {name: sorted(modules) for name, modules in _written(ids).items() if len(modules) > 1}
    assert not twice, f"name these once (common.py, parameters.py) and refer to the constant: {twice}"


def test_the_owners_hold_the_names() -> None:
    # The check reads the strings it should: a parameter name in the table, a resource id in common.py.
    where = _written({"DICOMPrefix", "DicomBucket"})
    assert where["DICOMPrefix"] == {"parameters.py"}
    assert where["DicomBucket"] == {"common.py"}
