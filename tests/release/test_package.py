"""The Lambda zip is reproducible and every handler the stack names imports from it in a bare interpreter."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import venv
import zipfile

import pytest
from dicom_store_contract import launch, metrics
from packaging.utils import canonicalize_name

from release import lock, package, project
from template_gen.template import build_template


def lambda_functions() -> list[dict]:
    """The Lambda functions of the stack's template, as template_gen builds it."""
    template = build_template((project.ROOT / "statemachine" / "import_workflow.asl.json").read_text())
    resources = template.to_dict()["Resources"]
    return [r["Properties"] for r in resources.values() if r["Type"] == "AWS::Lambda::Function"]


def handlers_named_by_stack() -> list[str]:
    return sorted({function["Handler"] for function in lambda_functions()})


def copy_sources(root):
    for folder in package.SOURCE_PACKAGES.values():
        shutil.copytree(project.ROOT / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))


def test_zip_targets_the_runtime_and_architecture_the_template_names():
    functions = lambda_functions()
    assert {f["Runtime"] for f in functions} == {f"python{project.LAMBDA_PYTHON}"}
    # No Architectures property means x86_64, which `make package` builds by default.
    assert {tuple(f.get("Architectures", ["x86_64"])) for f in functions} == {("x86_64",)}
    assert [f["Code"]["S3Key"] for f in functions] == [
        {"Fn::FindInMap": ["ReleaseArtifacts", "Functions", "Key"]}
    ] * len(functions)


def test_same_sources_give_the_same_bytes(functions_zip, tmp_path):
    # A copy of the sources with other timestamps and stray byte code: neither may reach the zip.
    root = tmp_path / "checkout"
    copy_sources(root)
    for path in root.rglob("*"):
        os.utime(path, (1_700_000_000, 1_700_000_000))
    (root / "functions" / "__pycache__").mkdir(exist_ok=True)
    (root / "functions" / "__pycache__" / "common.cpython-311.pyc").write_bytes(b"stale")

    again = package.build(root=root, dist=tmp_path / "dist")

    assert again.sha256 == functions_zip.sha256
    assert again.path.read_bytes() == functions_zip.path.read_bytes()
    assert hashlib.sha256(again.path.read_bytes()).hexdigest() == again.sha256
    assert (tmp_path / "dist" / f"{again.path.name}.sha256").read_text() == f"{again.sha256}  {again.path.name}\n"


def test_a_changed_source_changes_the_zip(functions_zip, tmp_path):
    root = tmp_path / "checkout"
    copy_sources(root)
    with (root / "functions" / "trigger_import.py").open("a") as source:
        source.write("\n# changed\n")

    assert package.build(root=root, dist=tmp_path / "dist").sha256 != functions_zip.sha256


def test_entries_have_fixed_metadata_and_no_byte_code(functions_zip):
    with zipfile.ZipFile(functions_zip.path) as archive:
        infos = archive.infolist()
    names = [info.filename for info in infos]
    assert names == sorted(names)
    assert {info.date_time for info in infos} == {package.ZIP_EPOCH}
    assert {info.external_attr >> 16 for info in infos} == {0o100644}
    assert not [n for n in names if n.endswith((".pyc", ".pyo")) or "__pycache__" in n]
    assert not [n for n in names if n.endswith(("INSTALLER", "direct_url.json", "REQUESTED"))]
    assert "functions/trigger_import.py" in names
    assert "dicom_store_contract/manifest.py" in names
    assert functions_zip.files == len(names)


def test_bundles_exactly_the_locked_distributions(functions_zip):
    locked = {canonicalize_name(name) for name in lock.pinned(project.lock_target("functions").path)}
    with zipfile.ZipFile(functions_zip.path) as archive:
        bundled = {
            canonicalize_name(top.removesuffix(".dist-info").rsplit("-", 1)[0])
            for top in {name.split("/")[0] for name in archive.namelist()}
            if top.endswith(".dist-info")
        }
    assert bundled == locked
    # All pure Python: the zip runs on either architecture's Python 3.12 (and imports on this machine's).
    assert functions_zip.compiled == ()


IMPORT_EVERY_HANDLER = """
import importlib, json, sys
task = sys.argv[1]
sys.path.insert(0, task)  # what Lambda does with /var/task
found = {}
for handler in sys.argv[2:]:
    module_name, _, attribute = handler.rpartition(".")
    module = importlib.import_module(module_name)
    found[handler] = callable(getattr(module, attribute))
import boto3, botocore
# The sweeper imports pydicom only when it meets an unsealed batch: read a real header the way it does.
from functions.sweeper import _parse_header
from pydicom.data import get_testdata_file
with open(get_testdata_file("CT_small.dcm", download=False), "rb") as handle:
    header = _parse_header(handle.read())
print(json.dumps({
    "handlers": found,
    "sweptSopInstanceUID": header["sopInstanceUID"],
    "boto3": boto3.__file__,
    "botocore": botocore.__file__,
    "services": boto3.session.Session().get_available_services(),
    "path": sys.path,
}))
"""


def test_every_handler_imports_from_the_unpacked_zip_in_a_bare_interpreter(functions_zip, tmp_path):
    task = tmp_path / "task"
    with zipfile.ZipFile(functions_zip.path) as archive:
        archive.extractall(task)
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False, system_site_packages=False).create(env_dir)
    handlers = handlers_named_by_stack()
    assert len(handlers) == launch.LAMBDA_FUNCTIONS
    environment = {
        "PATH": os.environ.get("PATH", ""),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "JOB_TABLE_NAME": "jobs",
        "INSTANCE_TABLE_NAME": "instances",
        "STATE_MACHINE_ARN": "arn:aws:states:us-east-1:123456789012:stateMachine:import",
        "DATASTORE_ID": "0123456789abcdef0123456789abcdef",
        "DATA_ACCESS_ROLE_ARN": "arn:aws:iam::123456789012:role/import",
        "DICOM_BUCKET": "dicom",
        "DICOM_PREFIX": "",
        "RESULTS_BUCKET": "results",
        "SWEEP_MIN_AGE_MINUTES": "60",
        "LOG_LEVEL": "INFO",
        "POWERTOOLS_SERVICE_NAME": "dicom-store-scp",
        "POWERTOOLS_METRICS_NAMESPACE": metrics.NAMESPACE,
    }
    result = subprocess.run(
        [str(env_dir / "bin" / "python"), "-I", "-c", IMPORT_EVERY_HANDLER, str(task), *handlers],
        capture_output=True,
        text=True,
        env=environment,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["handlers"] == dict.fromkeys(handlers, True)
    assert report["sweptSopInstanceUID"] == "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"
    # boto3 and botocore come from the zip, not from the build machine, and know the HealthImaging API.
    assert report["boto3"].startswith(str(task))
    assert report["botocore"].startswith(str(task))
    assert "medical-imaging" in report["services"]
    assert not [p for p in report["path"] if "site-packages" in p and not p.startswith(str(env_dir))]


@pytest.mark.parametrize("arch", ["arm64"])
def test_other_architecture_gets_its_own_name(arch):
    assert package.zip_name("1.2.3", arch) == f"dicom-store-scp-functions-1.2.3-{arch}.zip"
    assert package.zip_name("1.2.3", "x86_64") == "dicom-store-scp-functions-1.2.3.zip"


def test_sources_must_be_a_package(tmp_path):
    (tmp_path / "functions").mkdir()
    with pytest.raises(package.PackageError):
        package.source_entries(tmp_path)
