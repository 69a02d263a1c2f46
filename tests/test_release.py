"""The autograded exercises both ways (nbgrader): the instructor source passes every test cell, the generated
student version fails every one until answered, so no test is vacuous."""

import os
import subprocess
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]


def test_release_stubs_every_answer_and_its_tests_fail_until_answered(tmp_path):
    out = tmp_path / "release"
    done = subprocess.run([sys.executable, "scripts/release.py", "--check", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "KD_FAST": "1", "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    instructor = next(line for line in lines if line.startswith("instructor:"))
    student = next(line for line in lines if line.startswith("student:"))
    full, total = instructor.split()[1], instructor.split()[3]
    assert full == total and int(total) >= 12, instructor  # every test cell passes on the solutions
    assert student.startswith("student: 0 of "), student  # and none on the stubs
    released = sorted(p.name for p in out.glob("*.ipynb"))
    assert released == ["01_distillation_loss.ipynb", "02_teacher_student_loop.ipynb", "03_evaluation.ipynb",
                        "04_temperature_alpha_explorer.ipynb", "05_beyond_logits.ipynb"]
    for name in released:
        text = (out / name).read_text()
        assert "BEGIN SOLUTION" not in text and "BEGIN HIDDEN TESTS" not in text, name
        assert "raise NotImplementedError()" in text and "YOUR ANSWER HERE" in text, name
        nb = nbformat.read(out / name, as_version=4)
        assert not any(c.source.startswith("# NBVAL_") for c in nb.cells), name
        assert all(c.get("outputs") in (None, []) for c in nb.cells if c.cell_type == "code"), name
