"""requirements.txt, pyproject.toml, constraints.txt, environment.yml and make setup agree."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _requirements() -> dict:
    reqs = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        spec = line.split("#")[0].strip()
        if spec:
            name = re.split(r"[<>=!~ ]", spec, maxsplit=1)[0].lower()
            reqs[name] = spec.replace(" ", "")
    return reqs


def _environment_pip_lines() -> list:
    lines, in_pip = [], False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        stripped = line.split("#")[0].strip()
        if stripped == "- pip:":
            in_pip = True
        elif in_pip and stripped.startswith("- "):
            lines.append(stripped[2:].strip())
    return lines


def test_environment_yml_installs_what_make_setup_installs():
    """conda's pip step: the exact tested versions (constraints.txt), requirements.txt, then the package."""
    assert _environment_pip_lines() == ["-c constraints.txt", "-r requirements.txt", "-e ."]
    python = re.search(r"^\s*- python[=<>]*([0-9.]+)", (ROOT / "environment.yml").read_text(), re.M).group(1)
    makefile = (ROOT / "Makefile").read_text()
    assert python in re.search(r"^PY_SUPPORTED := (.*)$", makefile, re.M).group(1).split()
    assert "-c constraints.txt -r requirements.txt" in makefile


def test_make_setup_refuses_an_unsupported_python_in_one_line():
    import subprocess
    import sys

    script = ROOT / "scripts" / "check_python.py"
    ok = subprocess.run([sys.executable, script, f"{sys.version_info.major}.{sys.version_info.minor}"],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stderr == ""
    refused = subprocess.run([sys.executable, script, "3.99"], capture_output=True, text=True)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert "is not a supported version (3.99)" in refused.stderr


def test_every_requirement_says_what_uses_it():
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            assert "#" in line, f"no comment on: {line}"


def test_pyproject_declares_the_same_dependencies():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"]) + [d for extra in project["optional-dependencies"].values() for d in extra]
    as_dict = {re.split(r"[<>=!~ ]", d, maxsplit=1)[0].lower(): d.replace(" ", "") for d in declared}
    assert as_dict == _requirements()


def test_constraints_pin_every_requirement_exactly():
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.lower().replace("_", "-")] = version
    for name in _requirements():
        assert name.replace("_", "-") in pins, f"{name} is not pinned in constraints.txt"
    assert pins["torch"] == "2.13.0" and pins["ruff"] == "0.17.6"
