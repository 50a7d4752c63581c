"""``python -m template_gen``: render the template to templates/ (the package's only file I/O).

The committed template names the development artifacts (template_gen/release.py); ``make publish`` renders the
release template with the published ones (release/templates.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from template_gen.template import build_template, render

ROOT = Path(__file__).resolve().parent.parent
ASL_PATH = ROOT / "statemachine" / "import_workflow.asl.json"
OUTPUT_PATH = ROOT / "templates" / "dicom-store-scp.yaml"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m template_gen", description=__doc__)
    parser.add_argument("--output", type=Path, default=OUTPUT_PATH)
    args = parser.parse_args(argv)

    template = build_template(ASL_PATH.read_text(encoding="utf-8"))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render(template), encoding="utf-8")
    print(args.output)


if __name__ == "__main__":
    main()
