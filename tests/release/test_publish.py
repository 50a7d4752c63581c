"""``make publish``: dry runs change nothing; against moto the zip lands in each region's bucket, the ECR
repository is made, the engine is driven with the registry's token, and the release template names exactly
the published artifacts.

moto has no container registry behind ECR, and no engine runs here: the engine is a recording stand-in
(see test_image.fake_engine), so the image bytes themselves are never pushed in a test.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys

import boto3
import pytest
from cfn_flip import load as load_template
from moto import mock_aws

from release import image, package, project, publish
from release.templates import release_template

ACCOUNT = "123456789012"  # moto's account
REGIONS = ("us-east-1", "eu-west-1")
VERSION = project.version()


@pytest.fixture
def release(functions_zip, tmp_path) -> publish.Release:
    return publish.Release(
        version=VERSION,
        regions=REGIONS,
        account_id=ACCOUNT,
        artifact_bucket_prefix="dicom-store-scp-artifacts",
        zip_path=functions_zip.path,
        zip_sha256=functions_zip.sha256,
        output=tmp_path / "release",
    )


@pytest.fixture
def aws(aws_credentials):
    with mock_aws():
        yield


@pytest.fixture
def artifact_buckets(aws, release):
    for region in REGIONS:
        s3 = boto3.client("s3", region_name=region)
        options = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
        s3.create_bucket(Bucket=release.artifact_bucket(region), **options)


@pytest.fixture
def engine(fake_engine, tmp_path):
    calls = fake_engine("docker", info_exit=0)
    return image.Engine("docker", str(tmp_path / "bin" / "docker")), calls


def parameter_defaults(text: str) -> dict[str, str]:
    data, _ = load_template(text)
    return {name: spec.get("Default") for name, spec in data["Parameters"].items()}


def test_publishes_zip_repository_image_and_templates(release, artifact_buckets, engine):
    fake, calls = engine
    publish.plan(release, fake).execute(dry_run=False, say=lambda _: None)

    for region in REGIONS:
        s3 = boto3.client("s3", region_name=region)
        stored = s3.get_object(Bucket=release.artifact_bucket(region), Key=release.lambda_key)
        assert stored["Body"].read() == release.zip_path.read_bytes()
        assert stored["Metadata"] == {"sha256": release.zip_sha256}
        assert release.lambda_key == f"functions/dicom-store-scp-functions-{VERSION}.zip"

        [repository] = boto3.client("ecr", region_name=region).describe_repositories()["repositories"]
        assert repository["repositoryName"] == "dicom-store-scp"
        assert repository["imageTagMutability"] == "IMMUTABLE"
        assert repository["imageScanningConfiguration"] == {"scanOnPush": True}

        text = release.template_path(region).read_text()
        defaults = parameter_defaults(text)
        assert defaults["ContainerImageURI"] == f"{ACCOUNT}.dkr.ecr.{region}.amazonaws.com/dicom-store-scp:{VERSION}"
        assert defaults["LambdaArtifactBucket"] == f"dicom-store-scp-artifacts-{ACCOUNT}-{region}"
        assert defaults["LambdaArtifactKey"] == release.lambda_key
        assert load_template(text)[0]["Description"].endswith(f" Version {VERSION}.")

    recorded = calls.read_text().splitlines()
    logins = [line.split() for line in recorded if line.startswith("login")]
    assert len(logins) == len(REGIONS)
    for login in logins:
        assert login[:4] == ["login", "--username", "AWS", "--password-stdin"]
        assert re.fullmatch(r"https://\d{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com", login[4])
    # The password reached the engine through stdin only, and it is the one ECR's token carries.
    token = boto3.client("ecr", region_name=REGIONS[-1]).get_authorization_token()["authorizationData"][0]
    password = base64.b64decode(token["authorizationToken"]).decode().partition(":")[2]
    assert password
    assert password not in calls.read_text()
    assert calls.with_name(calls.name + ".stdin").read_text() == password
    for region in REGIONS:
        remote = release.image_uri(region)
        assert f"tag dicom-store-scp:{VERSION} {remote}" in recorded
        assert f"push {remote}" in recorded


def test_publishing_again_is_a_no_op_but_other_bytes_under_the_same_version_are_refused(
    release, artifact_buckets, engine, tmp_path
):
    fake, _ = engine
    publish.plan(release, fake, skip_image=True).execute(dry_run=False, say=lambda _: None)
    publish.plan(release, fake, skip_image=True).execute(dry_run=False, say=lambda _: None)

    other = tmp_path / release.zip_path.name
    other.write_bytes(release.zip_path.read_bytes() + b"\0")
    changed = publish.Release(**{**release.__dict__, "zip_path": other, "zip_sha256": "0" * 64})
    with pytest.raises(publish.PublishError, match="holds other bytes"):
        publish.plan(changed, fake, skip_image=True).execute(dry_run=False, say=lambda _: None)
    s3 = boto3.client("s3", region_name=REGIONS[0])
    stored = s3.get_object(Bucket=release.artifact_bucket(REGIONS[0]), Key=release.lambda_key)["Body"].read()
    assert stored == release.zip_path.read_bytes()


def test_a_missing_artifact_bucket_stops_the_release(release, aws, engine):
    fake, _ = engine
    with pytest.raises(publish.PublishError, match=r"artifact bucket .* is missing"):
        publish.plan(release, fake, skip_image=True).execute(dry_run=False, say=lambda _: None)
    assert not release.template_path(REGIONS[0]).exists()


def test_without_an_engine_the_image_step_fails_plainly(release, artifact_buckets, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(publish.PublishError, match=r"No container engine.*docker is not installed"):
        publish.plan(release, None).execute(dry_run=False, say=lambda _: None)


def test_dry_run_prints_every_action_and_touches_nothing(release, tmp_path):
    def unreachable(service, region):
        raise AssertionError(f"dry run created a {service} client")

    said: list[str] = []
    steps = publish.plan(release, None, client=unreachable)
    steps.execute(dry_run=True, say=said.append)

    assert len(said) == 4 * len(REGIONS)
    text = "\n".join(said)
    for region in REGIONS:
        assert release.image_uri(region) in text
        assert f"s3://{release.artifact_bucket(region)}/{release.lambda_key}" in text
        assert str(release.template_path(region)) in text
        assert not release.template_path(region).exists()
    assert not (tmp_path / "release").exists()


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


def test_dry_run_from_the_command_line(functions_zip, tmp_path):
    output = tmp_path / "release"
    result = run_publish(
        "--regions",
        ",".join(REGIONS),
        "--account-id",
        "111122223333",
        "--dist",
        str(functions_zip.path.parent),
        "--output",
        str(output),
        DRY_RUN="1",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "dry run: nothing was changed"
    assert sum(line.startswith("[dry-run ") for line in lines) == 4 * len(REGIONS)
    assert "docker push 111122223333.dkr.ecr.eu-west-1.amazonaws.com/dicom-store-scp:" in result.stdout
    assert not output.exists()


def test_version_must_be_setup_cfgs(functions_zip):
    result = run_publish("--version", "9.9.9", "--regions", "us-east-1", "--account-id", ACCOUNT, "--dry-run")
    assert result.returncode == 1
    assert f"setup.cfg says {VERSION}" in result.stderr


def test_dry_run_needs_the_account_because_it_asks_nobody(functions_zip):
    result = run_publish("--regions", "us-east-1", "--dist", str(functions_zip.path.parent), "--dry-run")
    assert result.returncode == 1
    assert "--account-id" in result.stderr


def test_one_version_names_image_zip_and_template():
    import dicom_store_scp

    assert dicom_store_scp.__version__ == VERSION
    assert package.zip_name(VERSION, "x86_64") == f"dicom-store-scp-functions-{VERSION}.zip"
    template = release_template(VERSION, "1.dkr.ecr.us-east-1.amazonaws.com/r:1", "b", "k.zip").to_dict()
    assert template["Description"].endswith(f"Version {VERSION}.")


def test_release_defaults_satisfy_the_parameters_own_constraints(release):
    for region in REGIONS:
        parameters = release_template(
            VERSION, release.image_uri(region), release.artifact_bucket(region), release.lambda_key
        ).to_dict()["Parameters"]
        for name in ("ContainerImageURI", "LambdaArtifactBucket", "LambdaArtifactKey"):
            spec = parameters[name]
            assert re.search(spec["AllowedPattern"], spec["Default"]), (name, spec["Default"])


def test_artifact_names_match_the_committed_templates_development_defaults(functions_zip):
    # template_gen/release.py carries what a publish from account 111122223333 in us-east-1 would produce.
    from template_gen import release as development

    ours = publish.Release(
        version=VERSION,
        regions=("us-east-1",),
        account_id="111122223333",
        artifact_bucket_prefix="dicom-store-scp-artifacts",
        zip_path=functions_zip.path,
        zip_sha256=functions_zip.sha256,
    )
    assert ours.image_uri("us-east-1") == development.CONTAINER_IMAGE_URI
    assert ours.artifact_bucket("us-east-1") == development.LAMBDA_ARTIFACT_BUCKET
    assert ours.lambda_key == development.LAMBDA_ARTIFACT_KEY


def test_release_template_is_cfn_lint_clean_in_its_region(release):
    from cfnlint.api import lint
    from cfnlint.config import ManualArgs

    from release.templates import release_template_text

    region = REGIONS[0]
    text = release_template_text(
        VERSION, release.image_uri(region), release.artifact_bucket(region), release.lambda_key
    )
    matches = lint(text, config=ManualArgs(regions=[region], include_checks=["I3042"]))
    assert [str(m) for m in matches] == []
