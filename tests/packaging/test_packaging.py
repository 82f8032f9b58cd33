"""Packaging: setup.py's ranges agree with the pins of requirements/constraints.txt, and
dev/install.sh refuses an unsupported Python at once, before creating or downloading anything."""
import ast
import os
import subprocess

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pins():
    """{canonical name: pinned version} of requirements/constraints.txt."""
    out = {}
    with open(os.path.join(REPO, "requirements", "constraints.txt")) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                name, version = line.split("==")
                out[canonicalize_name(name)] = version
    return out


def declared_requirements():
    """Every requirement string of setup.py (install_requires and extras), read without running it."""
    tree = ast.parse(open(os.path.join(REPO, "setup.py")).read())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            try:
                req = Requirement(node.value)
            except Exception:
                continue
            if req.specifier or node.value.isidentifier() or "-" in node.value:
                found.append(req)
    return found


def test_every_declared_dependency_is_pinned_inside_its_range():
    pinned = pins()
    reqs = [r for r in declared_requirements() if canonicalize_name(r.name) in pinned or r.specifier]
    assert len(reqs) >= 20
    for req in reqs:
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req.name} is declared in setup.py but not pinned in constraints.txt"
        assert req.specifier.contains(pinned[name], prereleases=True), \
            f"pin {req.name}=={pinned[name]} is outside setup.py's range {req.specifier}"


def test_install_refuses_python_38_in_one_line_without_downloading(tmp_path):
    log = tmp_path / "calls.log"
    fake = tmp_path / "python3.8"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\necho 3.8.18\n')
    fake.chmod(0o755)
    venv = tmp_path / "venv"
    env = dict(os.environ, PYTHON=str(fake), VENV=str(venv))
    proc = subprocess.run(["bash", os.path.join(REPO, "dev", "install.sh")], env=env,
                          capture_output=True, text=True, timeout=30)
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert proc.returncode == 1
    assert len(lines) == 1 and "Python 3.8.18" in lines[0] and ">= 3.10" in lines[0], lines
    assert not venv.exists()  # nothing created
    assert log.read_text().count("\n") == 1  # asked for its version only (no -m venv, no pip)
