"""negotiation.py bends pynetdicom at listed seams only: pinned exactly, each seam checked at start-up, and the SCP
refuses to start (exit 2, one line naming what is missing) rather than run without its bounds."""

from __future__ import annotations

import ast
import configparser
from pathlib import Path

import pynetdicom
from dicom_store_scp import __main__ as entry
from dicom_store_scp import negotiation
from packaging.requirements import Requirement
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer
from support.scp import free_port

ROOT = Path(__file__).parents[2]
PACKAGE = ROOT / "container" / "dicom_store_scp"


def test_setup_cfg_and_the_lock_pin_exactly_the_release_the_seams_were_written_for():
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    [pin] = [
        Requirement(line) for line in parser["options"]["install_requires"].split("\n") if line.startswith("pynetdicom")
    ]
    assert str(pin.specifier) == f"=={negotiation.PINNED}"
    assert f"pynetdicom=={negotiation.PINNED} " in (ROOT / "container" / "requirements.lock").read_text()
    assert negotiation.problems() == []  # the installed (locked) pynetdicom has every seam


def test_a_missing_seam_stops_the_scp_from_starting_with_one_line_naming_it(monkeypatch, tmp_path, capsys):
    monkeypatch.delattr(DULServiceProvider, "_is_transport_event")
    status = entry.main(["--storage-dir", str(tmp_path / "storage"), "--scp-port", str(free_port())])
    assert status == entry.EXIT_CANNOT_START == 2
    err = capsys.readouterr().err.strip()
    assert err == "dicom-store-scp: cannot start: pynetdicom has no DULServiceProvider._is_transport_event"
    assert not (tmp_path / "storage").exists()


def test_another_pynetdicom_release_stops_the_scp_from_starting(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(pynetdicom, "__version__", "3.0.5")
    assert entry.main(["--storage-dir", str(tmp_path / "storage"), "--scp-port", str(free_port())]) == 2
    assert f"3.0.5 is installed, the SCP is written for exactly {negotiation.PINNED}" in capsys.readouterr().err


def _private_attributes(tree: ast.AST) -> set[str]:
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
    }


def _pynetdicom_private_names() -> set[str]:
    """Every private name pynetdicom's objects the SCP touches have (their classes' and a built association's)."""
    assoc = Association(pynetdicom.AE(), "acceptor")
    owners: list[object] = [
        pynetdicom, assoc, assoc.dul, assoc.acse, assoc.dimse, Association, DULServiceProvider, RequestHandler,
        ThreadedAssociationServer, PresentationContext(),
    ]  # fmt: skip
    names: set[str] = set()
    for owner in owners:
        names |= set(dir(owner)) | set(getattr(owner, "__dict__", {}))
    return {name for name in names if name.startswith("_") and not name.startswith("__")}


def test_every_private_pynetdicom_name_negotiation_uses_is_a_listed_seam():
    tree = ast.parse((PACKAGE / "negotiation.py").read_text())
    # Read, set, called or overridden (a method of the same name replaces pynetdicom's).
    used = _private_attributes(tree) | {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
    listed = {seam.name for seam in negotiation.SEAMS}
    assert (used & _pynetdicom_private_names()) - listed == set()
    assert listed <= used  # and every listed seam is still used


def test_no_other_module_touches_pynetdicom_internals():
    """Outside negotiation.py: pynetdicom's public API only (no private module, name or attribute of its objects)."""
    for path in PACKAGE.rglob("*.py"):
        if path.name == "negotiation.py":
            continue
        source = path.read_text()
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pynetdicom"):
                assert not any(part.startswith("_") for part in (node.module or "").split(".")), path
                assert not any(alias.name.startswith("_") for alias in node.names), path
        seams = {seam.name for seam in negotiation.SEAMS}
        used = _private_attributes(tree) & _pynetdicom_private_names()
        own = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}  # engine's own _send
        assert not (used & seams) - own, f"{path.name} uses a pynetdicom seam"


def test_the_import_graph_of_the_scp_has_no_circle():
    modules = {path.stem: path for path in PACKAGE.glob("*.py")}
    modules.update({f"commitment.{path.stem}": path for path in (PACKAGE / "commitment").glob("*.py")})
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package if node.level == 1 else ""
                module = ".".join(part for part in (base, node.module or "") if part)
                if module and module in modules:
                    targets.add(module)
                for alias in node.names:
                    candidate = ".".join(part for part in (module, alias.name) if part)
                    if candidate in modules:
                        targets.add(candidate)
                    elif module == "" and alias.name in modules:
                        targets.add(alias.name)
        edges[name] = targets - {name}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for target in edges.get(start, ()):
            if target == goal or (target not in seen and reaches(target, goal, seen | {target})):
                return True
        return False

    circles = sorted(name for name in edges if reaches(name, name, {name}))
    assert circles == []
