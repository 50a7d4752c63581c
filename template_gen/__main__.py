"""``python -m template_gen``: render the template to templates/ (the package's only file I/O)."""

from __future__ import annotations

import argparse
from pathlib import Path

from template_gen.parameters import BY_NAME
from template_gen.template import build_template, render

ROOT = Path(__file__).resolve().parent.parent
ASL_PATH = ROOT / "statemachine" / "import_workflow.asl.json"
OUTPUT_PATH = ROOT / "templates" / "dicom-store-scp.yaml"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m template_gen", description=__doc__)
    parser.add_argument("--output", type=Path, default=OUTPUT_PATH)
    parser.add_argument("--image-uri", help="release default of ContainerImageURI")
    parser.add_argument("--lambda-bucket", help="release default of LambdaArtifactBucket")
    parser.add_argument("--lambda-key", help="release default of LambdaArtifactKey")
    args = parser.parse_args(argv)

    template = build_template(ASL_PATH.read_text(encoding="utf-8"))
    for param, value in (
        ("ContainerImageURI", args.image_uri),
        ("LambdaArtifactBucket", args.lambda_bucket),
        ("LambdaArtifactKey", args.lambda_key),
    ):
        if value is not None:
            assert param in BY_NAME
            template.parameters[param].Default = value
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render(template), encoding="utf-8")
    print(args.output)


if __name__ == "__main__":
    main()
