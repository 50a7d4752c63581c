"""``python -m release lock | build | package | publish``: the Makefile's release targets."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from release import image, project


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m release", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("lock", help="regenerate the lock files from setup.cfg (needs PyPI)")

    build = commands.add_parser("build", help="build the SCP image with docker or podman")
    build.add_argument("--python-image", help="base image instead of the Dockerfile's PYTHON_IMAGE")
    build.add_argument("--tag", help="local tag instead of dicom-store-scp:<version> (use one for any other base)")
    build.add_argument("--engine", choices=image.ENGINES, help="this engine only (default: the first that runs)")

    package = commands.add_parser("package", help="build the deterministic Lambda zip")
    package.add_argument("--arch", default="x86_64", choices=sorted(project.LAMBDA_ARCHITECTURES))

    commands.add_parser("docs", help="regenerate the generated parts of docs/ and the architecture picture")

    publish = commands.add_parser(
        "publish", help="push the image, upload the zip and the release template to every region's bucket"
    )
    publish.add_argument("--version", default=project.version())
    publish.add_argument(
        "--regions", default="", help="comma list, e.g. us-east-1,eu-west-1 (default: every supported region)"
    )
    publish.add_argument("--arch", default="x86_64", choices=sorted(project.LAMBDA_ARCHITECTURES))
    publish.add_argument(
        "--image-repository",
        help="ECR repository URI without tag, e.g. the seller's AWS Marketplace repository "
        "(default: <account>.dkr.ecr.us-east-1.amazonaws.com/dicom-store-scp, made when missing)",
    )
    publish.add_argument("--image-digest", help="sha256:... of an image already pushed there: push nothing")
    publish.add_argument(
        "--artifact-bucket-prefix", help="buckets are <prefix>-<region> (default: dicom-store-scp-artifacts-<account>)"
    )
    publish.add_argument("--account-id", help="the publishing account (default: the caller's, from STS)")
    publish.add_argument("--dist", type=Path, default=project.DIST, help="where make package put the zip")
    publish.add_argument("--output", type=Path, default=project.DIST / "release", help="the release template goes here")
    publish.add_argument(
        "--dry-run",
        action="store_true",
        default=os.environ.get("DRY_RUN", "") not in {"", "0"},
        help="print every action and change nothing (also DRY_RUN=1)",
    )

    args = parser.parse_args(argv)
    if args.command == "lock":
        from release import lock

        for target in project.lock_targets():
            print(f"wrote {lock.write(target)}")
        return 0
    if args.command == "build":
        return image.build_command(python_image=args.python_image, tag=args.tag, engine_name=args.engine)
    if args.command == "package":
        from release import package as packaging

        built = packaging.build(arch=args.arch)
        print(f"{built.path.relative_to(project.ROOT)}  sha256 {built.sha256}  ({built.files} files)")
        return 0
    if args.command == "docs":
        from release import docs

        for written in docs.write_all():
            print(f"wrote {written}")
        return 0
    if args.command == "publish":
        return publish_command(args)
    return 2


def publish_command(args: argparse.Namespace) -> int:
    from release import image, package, publish
    from template_gen.release import HEALTHIMAGING_REGIONS

    try:
        version = publish.check_version(args.version)
        regions = tuple(region.strip() for region in args.regions.split(",") if region.strip())
        account = publish.account_id(args.dry_run, args.account_id)
        zip_path = args.dist / package.zip_name(version, args.arch)
        release = publish.Release(
            version=version,
            regions=regions or HEALTHIMAGING_REGIONS,
            account_id=account,
            image_repository=args.image_repository or publish.development_repository(account),
            artifact_bucket_prefix=args.artifact_bucket_prefix or publish.development_bucket_prefix(account),
            zip_path=zip_path,
            zip_sha256=publish.zip_sha256(zip_path),
            output=args.output,
        )
        engine = None
        if args.image_digest is None and not args.dry_run:
            engine, reasons = image.find_engine()
            if engine is None:
                raise publish.PublishError(
                    image.no_engine_message("The image cannot be pushed (--image-digest to go on).", reasons)
                )
        publish.plan(release, engine, image_digest=args.image_digest).execute(args.dry_run)
    except publish.PublishError as error:
        print(f"publish: {error}", file=sys.stderr)
        return 1
    if args.dry_run:
        print("dry run: nothing was changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
