"""requirements.txt and environment.yml list the same packages with the same bounds."""

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


def _environment() -> dict:
    reqs, in_pip = {}, False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        stripped = line.strip()
        if stripped == "- pip:":
            in_pip = True
            continue
        if in_pip and stripped.startswith("- "):
            spec = stripped[2:].split("#")[0].strip()
            reqs[re.split(r"[<>=!~ ]", spec, maxsplit=1)[0].lower()] = spec.replace(" ", "")
    return reqs


def test_same_packages_same_bounds():
    req, env = _requirements(), _environment()
    assert req, "requirements.txt lists nothing"
    assert req == env


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
