"""The committed template is exactly what the generator renders, and the render is deterministic."""

from __future__ import annotations

from pathlib import Path

from template_gen import build_template, render
from template_gen.__main__ import main


def test_committed_template_equals_a_fresh_render(committed: str, rendered: str) -> None:
    assert committed == rendered, "templates/ is stale: run `make render` and commit the result"


def test_render_is_deterministic(asl_text: str, rendered: str) -> None:
    assert render(build_template(asl_text)) == rendered


def test_main_writes_the_template(tmp_path: Path, rendered: str) -> None:
    out = tmp_path / "t.yaml"
    main(["--output", str(out)])
    assert out.read_text(encoding="utf-8") == rendered
