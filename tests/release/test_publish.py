"""``make publish``: dry runs change nothing; against moto the image goes to one repository and the template names
it by the digest the push reported, the zip and the template land in every region's ``<prefix>-<region>`` bucket,
and ONE release template serves every region.

moto has no container registry behind ECR, and no engine runs here: the engine is a recording stand-in
(conftest.fake_engine) that reports a digest as docker and podman do, so the image bytes are never pushed.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from cfn_flip import load as load_template
from moto import mock_aws
from support.cfn import Deployment
from support.moto import MotoServer, aws_env

from release import image, package, project, publish
from release.templates import release_template, release_template_text
from template_gen import release as layout

from .conftest import ARTIFACT_PREFIX, MOTO_ACCOUNT, development_release

ACCOUNT = MOTO_ACCOUNT
REGIONS = ("us-east-1", "eu-west-1")
VERSION = project.version()
PREFIX = ARTIFACT_PREFIX
MARKETPLACE_REPOSITORY = "709825985650.dkr.ecr.us-east-1.amazonaws.com/acme/dicom-store-scp"


@pytest.fixture
def release(functions_zip, tmp_path) -> publish.Release:
    return development_release(functions_zip, REGIONS, tmp_path / "release")


@pytest.fixture
def aws(aws_credentials):
    with mock_aws():
        yield


@pytest.fixture(scope="module")
def moto_server(tmp_path_factory):
    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto_server.log")
    yield server
    server.stop()


@pytest.fixture
def registry(moto_server, monkeypatch):
    """Every AWS call, the publish's and the fake engine's push, goes to a fresh moto_server over HTTP: the push
    puts the image's manifest into its ECR, as a real push would."""
    reset = http.client.HTTPConnection("127.0.0.1", moto_server.port, timeout=30)
    reset.request("POST", "/moto-api/reset")
    assert reset.getresponse().status == 200
    reset.close()
    for name, value in aws_env(moto_server.endpoint, FAKE_ECR_ENDPOINT=moto_server.endpoint).items():
        monkeypatch.setenv(name, value)
    return moto_server


@pytest.fixture
def engine(fake_engine, tmp_path):
    calls = fake_engine("docker", info_exit=0)
    return image.Engine("docker", str(tmp_path / "bin" / "docker")), calls


def pushed_digest(reference: str) -> str:
    """The digest the fake engine (conftest.fake_engine) reports for a push of ``reference``."""
    return "sha256:" + hashlib.sha256(reference.encode()).hexdigest()


def quiet(_: str) -> None:
    return None


def mapping(text: str) -> dict[str, dict[str, str]]:
    data, _ = load_template(text)
    result: dict[str, dict[str, str]] = data["Mappings"][layout.MAPPING]
    return result


def registry_digest(region: str, tag: str) -> str:
    ecr = boto3.client("ecr", region_name=region)
    [detail] = ecr.describe_images(repositoryName="dicom-store-scp", imageIds=[{"imageTag": tag}])["imageDetails"]
    return str(detail["imageDigest"])


def test_publishes_image_by_digest_zip_and_one_template_to_every_region(release, registry, engine):
    fake, calls = engine
    publish.plan(release, fake).execute(dry_run=False, say=quiet)

    # The digest ECR holds for the version's tag, which the push reported.
    digest = registry_digest("us-east-1", VERSION)
    text = release.template_path.read_text()
    assert release.template_path == release.output / VERSION / "dicom-store-scp.yaml"
    assert list(release.output.rglob("*.yaml")) == [release.template_path]  # one template, not one per region
    versions = {
        region: boto3.client("s3", region_name=region).head_object(Bucket=f"{PREFIX}-{region}", Key=release.lambda_key)[
            "VersionId"
        ]
        for region in REGIONS
    }
    assert mapping(text) == {
        "Image": {"Uri": f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/dicom-store-scp@{digest}"},
        "Functions": {"BucketPrefix": PREFIX, "Key": f"dicom-store-scp/{VERSION}/{release.zip_path.name}"},
        **{region: {"FunctionsVersion": versions[region]} for region in REGIONS},
    }
    # The release records what it published, region by region.
    record = json.loads(release.record_path.read_text())
    assert record["image"] == mapping(text)["Image"]["Uri"]
    assert {region: f["versionId"] for region, f in record["functions"].items()} == versions
    assert all(f["sha256"] == release.zip_sha256 for f in record["functions"].values())
    assert load_template(text)[0]["Description"].endswith(f" Version {VERSION}.")

    for region in REGIONS:
        s3 = boto3.client("s3", region_name=region)
        bucket = f"{PREFIX}-{region}"
        stored = s3.get_object(Bucket=bucket, Key=release.lambda_key)
        assert stored["Body"].read() == release.zip_path.read_bytes()
        assert stored["Metadata"] == {"sha256": release.zip_sha256}
        # The same template bytes in every region's bucket: its S3 URL launches it there.
        assert s3.get_object(Bucket=bucket, Key=release.template_key)["Body"].read().decode() == text
        assert s3.get_bucket_location(Bucket=bucket)["LocationConstraint"] in {region, None}
        assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
        assert json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"]) == publish.artifact_bucket_policy(bucket)
        block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
        assert block["BlockPublicAcls"] and block["IgnorePublicAcls"]

    # One repository (the development default: this account's, us-east-1), made with immutable tags.
    [repository] = boto3.client("ecr", region_name="us-east-1").describe_repositories()["repositories"]
    assert repository["repositoryName"] == "dicom-store-scp"
    assert repository["imageTagMutability"] == "IMMUTABLE"
    assert boto3.client("ecr", region_name="eu-west-1").describe_repositories()["repositories"] == []

    recorded = calls.read_text().splitlines()
    assert [line.split() for line in recorded if line.startswith("login")] == [
        ["login", "--username", "AWS", "--password-stdin", f"https://{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com"]
    ]
    token = boto3.client("ecr", region_name="us-east-1").get_authorization_token()["authorizationData"][0]
    password = base64.b64decode(token["authorizationToken"]).decode().partition(":")[2]
    assert password and password not in calls.read_text()
    assert calls.with_name(calls.name + ".stdin").read_text() == password
    assert f"tag dicom-store-scp:{VERSION} {release.image_tag_uri}" in recorded
    assert f"push {release.image_tag_uri}" in recorded


def test_podman_reports_the_digest_through_a_file(release, registry, fake_engine, tmp_path):
    calls = fake_engine("podman", info_exit=0)
    podman = image.Engine("podman", str(tmp_path / "bin" / "podman"))
    publish.plan(release, podman).execute(dry_run=False, say=quiet)
    assert any(re.fullmatch(r"push --digestfile \S+ " + re.escape(release.image_tag_uri), line)
               for line in calls.read_text().splitlines())  # fmt: skip
    assert mapping(release.template_path.read_text())["Image"]["Uri"] == release.image_by_digest(
        registry_digest("us-east-1", VERSION)
    )


def test_a_digest_other_than_the_registrys_stops_before_the_template(release, registry, fake_engine, tmp_path):
    fake_engine("docker", info_exit=0)
    script = tmp_path / "bin" / "docker"
    wrong = "sha256:" + "9" * 64
    script.write_text(
        script.read_text().replace('"$reference")" || exit 1', f'"$reference")" || exit 1; digest={wrong}')
    )
    with pytest.raises(publish.PublishError, match=f"the push reported {wrong}, but ECR holds sha256:"):
        publish.plan(release, image.Engine("docker", str(script))).execute(dry_run=False, say=quiet)
    assert not release.template_path.exists()


def test_a_push_without_a_digest_stops_before_the_template(release, aws, fake_engine, tmp_path):
    fake_engine("docker", info_exit=0)
    script = tmp_path / "bin" / "docker"
    script.write_text(script.read_text().replace("digest: $digest", "pushed"))
    with pytest.raises(publish.PublishError, match="reported no image digest"):
        publish.plan(release, image.Engine("docker", str(script))).execute(dry_run=False, say=quiet)
    assert not release.template_path.exists()


def test_marketplace_repository_is_pushed_to_never_created(functions_zip, tmp_path, aws, engine):
    fake, calls = engine
    marketplace = publish.Release(
        version=VERSION,
        regions=("eu-west-2",),
        account_id=ACCOUNT,
        image_repository=MARKETPLACE_REPOSITORY,
        artifact_bucket_prefix=PREFIX,
        zip_path=functions_zip.path,
        zip_sha256=functions_zip.sha256,
        output=tmp_path / "release",
    )
    steps = publish.plan(marketplace, fake)
    assert not any("ensure repository" in step.description for step in steps.steps)
    steps.execute(dry_run=False, say=quiet)

    assert boto3.client("ecr", region_name="us-east-1").describe_repositories()["repositories"] == []
    recorded = calls.read_text().splitlines()
    assert f"push {MARKETPLACE_REPOSITORY}:{VERSION}" in recorded
    assert "login --username AWS --password-stdin https://709825985650.dkr.ecr.us-east-1.amazonaws.com" in recorded
    uri = mapping(marketplace.template_path.read_text())["Image"]["Uri"]
    assert uri == f"{MARKETPLACE_REPOSITORY}@{pushed_digest(f'{MARKETPLACE_REPOSITORY}:{VERSION}')}"


def test_publishing_again_is_a_no_op_but_other_bytes_under_the_same_version_are_refused(release, aws, engine, tmp_path):
    fake, _ = engine
    digest = "sha256:" + "b" * 64
    publish.plan(release, fake, image_digest=digest).execute(dry_run=False, say=quiet)
    publish.plan(release, fake, image_digest=digest).execute(dry_run=False, say=quiet)

    other = tmp_path / release.zip_path.name
    other.write_bytes(release.zip_path.read_bytes() + b"\0")
    changed = publish.Release(**{**release.__dict__, "zip_path": other, "zip_sha256": "0" * 64})
    with pytest.raises(publish.PublishError, match="holds other bytes"):
        publish.plan(changed, fake, image_digest=digest).execute(dry_run=False, say=quiet)
    # Another image under the same version renders another template: its upload is refused as well.
    with pytest.raises(publish.PublishError, match="holds other bytes"):
        publish.plan(release, fake, image_digest="sha256:" + "c" * 64).execute(dry_run=False, say=quiet)
    s3 = boto3.client("s3", region_name=REGIONS[0])
    bucket = release.artifact_bucket(REGIONS[0])
    assert s3.get_object(Bucket=bucket, Key=release.lambda_key)["Body"].read() == release.zip_path.read_bytes()
    versions = s3.list_object_versions(Bucket=bucket, Prefix=release.lambda_key)["Versions"]
    assert len(versions) == 1


def test_without_an_engine_the_image_step_fails_plainly(release, aws, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(publish.PublishError, match=r"No container engine.*docker is not installed"):
        publish.plan(release, None).execute(dry_run=False, say=quiet)


def test_dry_run_prints_every_action_and_touches_nothing(release, tmp_path):
    def unreachable(service, region):
        raise AssertionError(f"dry run created a {service} client")

    said: list[str] = []
    steps = publish.plan(release, None, client=unreachable)
    steps.execute(dry_run=True, say=said.append)

    # repository, push, per region: bucket, zip; the template; per region: template, policy.
    assert len(said) == 3 + 4 * len(REGIONS)
    text = "\n".join(said)
    assert f"push {release.image_tag_uri}" in text
    assert str(release.template_path) in text
    for region in REGIONS:
        assert f"s3://{release.artifact_bucket(region)}/{release.lambda_key}" in text
        assert release.template_url(region) in text
    assert not (tmp_path / "release").exists()


def test_settings_are_checked_before_anything_runs(release):
    for change, message in (
        ({"regions": ("us-east-1", "eu-central-1")}, "eu-central-1: AWS HealthImaging does not run there"),
        ({"image_repository": release.image_tag_uri}, "not an ECR repository URI"),
        ({"artifact_bucket_prefix": "Upper_Case"}, "no bucket prefix"),
        ({"artifact_bucket_prefix": "x" * 50}, "at most 48 characters"),
    ):
        with pytest.raises(publish.PublishError, match=message):
            publish.Release(**{**release.__dict__, **change})
    with pytest.raises(publish.PublishError, match="not an image digest"):
        publish.plan(release, None, image_digest="latest")


def run_publish(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    # Any AWS call would go to a closed loopback port and fail the run.
    environment.update(AWS_ENDPOINT_URL="http://127.0.0.1:9", AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x")
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-m", "release", "publish", *args],
        capture_output=True,
        text=True,
        env=environment,
        cwd=project.ROOT,
        timeout=120,
    )


def test_dry_run_from_the_command_line_serves_every_supported_region_by_default(functions_zip, tmp_path):
    output = tmp_path / "release"
    result = run_publish(
        "--account-id",
        "111122223333",
        "--image-repository",
        MARKETPLACE_REPOSITORY,
        "--artifact-bucket-prefix",
        PREFIX,
        "--dist",
        str(functions_zip.path.parent),
        "--output",
        str(output),
        DRY_RUN="1",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "dry run: nothing was changed"
    regions = layout.HEALTHIMAGING_REGIONS
    assert sum(line.startswith("[dry-run ") for line in lines) == 2 + 4 * len(regions)
    assert f"docker push {MARKETPLACE_REPOSITORY}:{VERSION}" in result.stdout
    for region in regions:
        assert f"https://{PREFIX}-{region}.s3.{region}.amazonaws.com/dicom-store-scp/{VERSION}/" in result.stdout
    assert not output.exists()


def test_development_defaults_name_the_publishing_accounts_own_repository_and_buckets(functions_zip):
    result = run_publish(
        "--account-id", "111122223333", "--regions", "eu-west-1", "--dist", str(functions_zip.path.parent),
        "--dry-run",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "ensure repository dicom-store-scp" in result.stdout
    assert "docker push 111122223333.dkr.ecr.us-east-1.amazonaws.com/dicom-store-scp:" in result.stdout
    assert "s3://dicom-store-scp-artifacts-111122223333-eu-west-1/" in result.stdout


def test_version_must_be_setup_cfgs(functions_zip):
    result = run_publish("--version", "9.9.9", "--regions", "us-east-1", "--account-id", ACCOUNT, "--dry-run")
    assert result.returncode == 1
    assert f"setup.cfg says {VERSION}" in result.stderr


def test_dry_run_needs_the_account_because_it_asks_nobody(functions_zip):
    result = run_publish("--regions", "us-east-1", "--dist", str(functions_zip.path.parent), "--dry-run")
    assert result.returncode == 1
    assert "--account-id" in result.stderr


def artifacts(image_uri: str = MARKETPLACE_REPOSITORY + "@sha256:" + "a" * 64) -> layout.Artifacts:
    key = layout.artifact_key(VERSION, package.zip_name(VERSION, "x86_64"))
    return layout.Artifacts(image_uri, PREFIX, key, {region: "v" + region for region in layout.HEALTHIMAGING_REGIONS})


def test_one_version_names_image_zip_and_template():
    import dicom_store_scp

    assert dicom_store_scp.__version__ == VERSION
    assert package.zip_name(VERSION, "x86_64") == f"dicom-store-scp-functions-{VERSION}.zip"
    template = release_template(VERSION, artifacts()).to_dict()
    assert template["Description"].endswith(f"Version {VERSION}.")


def test_development_artifacts_are_what_a_publish_from_the_development_account_names(functions_zip):
    # template_gen/release.py carries what a publish from account 111122223333 would name (the image by tag).
    ours = publish.Release(
        version=VERSION,
        regions=("us-east-1",),
        account_id=layout.DEVELOPMENT_ACCOUNT,
        image_repository=publish.development_repository(layout.DEVELOPMENT_ACCOUNT),
        artifact_bucket_prefix=publish.development_bucket_prefix(layout.DEVELOPMENT_ACCOUNT),
        zip_path=functions_zip.path,
        zip_sha256=functions_zip.sha256,
    )
    assert layout.DEVELOPMENT.image_uri == ours.image_tag_uri
    assert layout.DEVELOPMENT.bucket_prefix == ours.artifact_bucket_prefix
    assert layout.DEVELOPMENT.functions_key == ours.lambda_key


def test_release_template_is_cfn_lint_clean_in_every_supported_region(tmp_path):
    # As tests/template_gen/test_checks.py runs it on the committed template: every informational rule, I3042
    # for region and account as well.
    path = tmp_path / "dicom-store-scp.yaml"
    path.write_text(release_template_text(VERSION, artifacts()), encoding="utf-8")
    cfn_lint = Path(sys.executable).parent / "cfn-lint"
    arguments = ("--include-checks", "I", "--configure-rule", "I3042:region=true", "I3042:accountId=true")
    result = subprocess.run(
        [str(cfn_lint), *arguments, "--regions", *layout.HEALTHIMAGING_REGIONS, "--", str(path)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_make_publish_passes_the_settings_on():
    def command(*settings: str) -> str:
        dry_run = subprocess.run(
            ["make", "--dry-run", "--no-print-directory", "publish", *settings],
            cwd=project.ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        return " ".join(dry_run.stdout.replace("\\\n", " ").split())

    given = command(
        f"IMAGE_REPOSITORY={MARKETPLACE_REPOSITORY}",
        f"ARTIFACT_BUCKET_PREFIX={PREFIX}",
        "REGIONS=us-east-1,eu-west-2",
        "IMAGE_DIGEST=sha256:" + "e" * 64,
        "ACCOUNT_ID=111122223333",
        "DRY_RUN=1",
    )
    assert (
        f"-m release publish --version {VERSION} --arch x86_64 --regions us-east-1,eu-west-2 "
        f"--artifact-bucket-prefix {PREFIX} --image-repository {MARKETPLACE_REPOSITORY} "
        f"--image-digest sha256:{'e' * 64} --account-id 111122223333 --dry-run"
    ) in given
    # Nothing given: every supported region, the account's own repository and buckets (publish's defaults).
    assert command().endswith(f"-m release publish --version {VERSION} --arch x86_64")


def test_stacks_run_the_published_code_even_after_the_key_is_overwritten(release, registry, engine):
    """The buckets are public and versioned: anything that writes the key again (another tool, a hand, a second
    publisher without If-None-Match) makes a new current version. The template names the version published."""
    fake, _ = engine
    publish.plan(release, fake, image_digest="sha256:" + "d" * 64).execute(dry_run=False, say=quiet)
    text = release.template_path.read_text()
    for region in REGIONS:
        s3 = boto3.client("s3", region_name=region)
        bucket = release.artifact_bucket(region)
        s3.put_object(Bucket=bucket, Key=release.lambda_key, Body=b"not the release")
        assert s3.get_object(Bucket=bucket, Key=release.lambda_key)["Body"].read() == b"not the release"
        # What CloudFormation hands Lambda for a stack in that region: bucket, key and the pinned version.
        template, _ = load_template(text)
        deployment = Deployment(template)
        deployment.pseudo["AWS::Region"] = region
        for function in deployment.of_type("AWS::Lambda::Function").values():
            code = deployment.value(function["Properties"]["Code"])
            assert (code["S3Bucket"], code["S3Key"]) == (bucket, release.lambda_key)
            got = s3.get_object(Bucket=bucket, Key=code["S3Key"], VersionId=code["S3ObjectVersion"])
            assert got["Body"].read() == release.zip_path.read_bytes()
    # Publishing the version again is refused: the key now holds other bytes.
    with pytest.raises(publish.PublishError, match="holds other bytes"):
        publish.plan(release, fake, image_digest="sha256:" + "d" * 64).execute(dry_run=False, say=quiet)


def test_any_account_may_read_the_pinned_version_and_nothing_more(release):
    [grant] = publish.artifact_bucket_policy("acme-us-east-1")["Statement"]
    # GetObject with a versionId is authorised as s3:GetObjectVersion as well.
    assert grant["Action"] == ["s3:GetObject", "s3:GetObjectVersion"]
    assert grant["Resource"] == f"arn:aws:s3:::acme-us-east-1/{layout.ARTIFACT_PREFIX}/*"
    assert grant["Principal"] == "*" and grant["Effect"] == "Allow" and "Condition" not in grant


def test_a_bucket_without_versioning_stops_the_release(release, aws):
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="unversioned")
    with pytest.raises(publish.PublishError, match="versioning is not enabled"):
        publish.upload_once(s3, "unversioned", "dicom-store-scp/x/f.zip", b"zip", "0" * 64, "application/zip")
