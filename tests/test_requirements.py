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
