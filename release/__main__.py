"""``python -m release lock | build | package | publish``: the Makefile's release targets."""

from __future__ import annotations

import argparse
import sys

from release import project


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m release", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("lock", help="regenerate the lock files from setup.cfg (needs PyPI)")

    commands.add_parser("build", help="build the SCP image with docker or podman")

    package = commands.add_parser("package", help="build the deterministic Lambda zip")
    package.add_argument("--arch", default="x86_64", choices=sorted(project.LAMBDA_ARCHITECTURES))

    args = parser.parse_args(argv)
    if args.command == "lock":
        from release import lock

        for target in project.lock_targets():
            print(f"wrote {lock.write(target)}")
        return 0
    if args.command == "build":
        from release import image

        return image.build_command()
    if args.command == "package":
        from release import package as packaging

        built = packaging.build(arch=args.arch)
        print(f"{built.path.relative_to(project.ROOT)}  sha256 {built.sha256}  ({built.files} files)")
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
