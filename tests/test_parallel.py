"""Data parallelism on this machine: 2 CPU processes joined over gloo by ``torchrun`` (what ``accelerate launch
--multi_gpu`` starts too). The maths is checked exactly with a dropout-free student; the command lines end to end."""

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kd_helpers.data import ChunkedLengthSampler
from kd_helpers.parallel import SplitBatches
from kd_helpers.train import distill, evaluate_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from ddp_worker import setting  # noqa: E402

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
# accelerate 1.16 starts several CPU processes through its torchrun path (--multi_gpu; without GPUs they are joined
# over gloo); `--cpu --num_processes 2` starts one process unless MPI is set up (README, "Scaling out").
ACCELERATE = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
# Accuracy of a 2-process fast run vs the 1-process run: each process draws its own dropout masks, so they differ
# by noise; 0.08 is 2.5 standard errors of one accuracy on the 200 fast-mode validation rows.
ACCURACY_TOLERANCE = 0.08


def _launch(*args, launcher=TORCHRUN, timeout=300, attempts=2):
    """Run a 2-process launch. One that *hangs* (seen once, 2026-12-06: a worker stalled for 600 s in a launch that
    takes about 20 s, and outlived torchrun) is killed with its whole process group and started once more; one that
    fails or gives other numbers is never retried, and a second hang fails the test."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for _ in range(attempts):
        proc = subprocess.Popen([*launcher, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                cwd=ROOT, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
            return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # torchrun and every worker it started
            proc.communicate()
    pytest.fail(f"{' '.join(map(str, [*launcher, *args]))}: hung {attempts} times ({timeout} s each)")


def _cli(*args, timeout=600):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "kd_helpers", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


@pytest.mark.parametrize("rows, batch, processes", [(61, 8, 2), (64, 8, 2), (65, 8, 2), (50, 16, 3), (7, 4, 3)])
def test_split_batches_are_disjoint_cover_every_row_and_keep_the_order(rows, batch, processes):
    reference = ChunkedLengthSampler(list(range(rows)), batch, chunk_batches=4, seed=0)
    shards = [SplitBatches(ChunkedLengthSampler(list(range(rows)), batch, chunk_batches=4, seed=0), processes, r)
              for r in range(processes)]
    parts = [list(s) for s in shards]
    assert len({len(p) for p in parts}) == 1  # every process takes the same number of steps
    assert all(len(b) >= 1 for p in parts for b in p)  # nobody gets an empty part
    seen = [i for p in parts for b in p for i in b]
    assert sorted(seen) == list(range(rows))  # disjoint and complete
    single = [sorted(b) for b in reference]
    steps = [sorted(sum((p[k] for p in parts), [])) for k in range(len(parts[0]))]
    groups, pending = [], []  # each step is one single-process batch, or a small one joined to its neighbour
    for b in single:
        pending.append(b)
        if sorted(sum(pending, [])) == steps[len(groups)]:
            groups.append(pending)
            pending = []
    assert not pending and len(groups) == len(steps)
    assert all(len(g) == 1 or (len(g) == 2 and min(map(len, g)) < processes) for g in groups)
    if rows > 40:
        assert list(shards[0]) != list(shards[0])  # a new order every epoch (each iteration), as the sampler's
    assert len(shards[0]) == len(reference) == math.ceil(rows / batch)  # counted without drawing an order


def test_two_processes_give_the_single_process_step(tiny_bert_dir, tmp_path):
    """Without dropout the maths is the same: gradients equal up to float summation order, so the weights after
    2 epochs (16 AdamW steps, a last batch of 5 rows split 3 + 2) match the plain loop's to 1e-5."""
    student, teacher, train_loader, val_loader = setting(str(tiny_bert_dir))
    before = evaluate_model(student, val_loader, torch.device("cpu"))
    run = distill(student, teacher, train_loader, val_loader, torch.device("cpu"), epochs=2, lr=1e-3,
                  verbose=False, progress=False)
    out = tmp_path / "ddp.pt"
    done = _launch(str(ROOT / "tests" / "ddp_worker.py"), str(tiny_bert_dir), str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = torch.load(out)
    assert ddp["world_size"] == 2
    assert ddp["before"] == before
    assert [h["accuracy"] for h in ddp["history"]] == [h["accuracy"] for h in run.history]
    for key in ("loss", "distill_loss", "student_loss"):
        assert [h[key] for h in ddp["history"]] == pytest.approx([h[key] for h in run.history], abs=1e-5)
    reference = student.state_dict()
    moved = max((reference[k] - setting(str(tiny_bert_dir))[0].state_dict()[k]).abs().max().item() for k in reference)
    assert moved > 1e-3  # training changed the weights, so the comparison below means something
    for name, value in reference.items():
        torch.testing.assert_close(ddp["weights"][name], value, atol=1e-5, rtol=1e-4, msg=name)
    largest = max((ddp["weights"][k] - v).abs().max().item() for k, v in reference.items())
    print(f"largest weight difference, 2 processes vs 1: {largest:.1e}")  # README, "Scaling out" (pytest -s)
    first, second = ddp["shards"]
    assert not set(first) & set(second) and sorted(first + second) == list(range(61))


@pytest.fixture(scope="module")
def single_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    done = _cli("distill", "--fast", "--no-baseline", "--no-small-student", "--output-dir", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("launcher", [TORCHRUN, ACCELERATE], ids=["torchrun", "accelerate"])
def test_launched_distill_fast(single_process_run, tmp_path, launcher):
    """The README's commands: 2 processes, one results file, one student, disjoint shards covering every row."""
    out = tmp_path / "ddp"
    done = _launch("-m", "kd_helpers", "distill", "--fast", "--no-baseline", "--output-dir", str(out),
                   launcher=launcher)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "student"]
    assert done.stdout.count("Saved ") == 1 and done.stdout.count("| Teacher |") == 1  # the main process reports
    assert results["world_size"] == 2 and not results["interrupted"]
    rows = results["config"]["train_rows"]
    first, second = results["first_epoch_rows"]
    assert not set(first) & set(second) and sorted(first + second) == list(range(rows))
    assert sum(results["rows_per_process"]) == results["config"]["epochs"] * rows
    assert results["teacher_accuracy"] == single_process_run["teacher_accuracy"]
    assert results["student_before_accuracy"] == single_process_run["student_before_accuracy"]
    assert abs(results["student_after_accuracy"] - single_process_run["student_after_accuracy"]) <= ACCURACY_TOLERANCE
    assert results["student_after_accuracy"] > results["student_before_accuracy"]  # it learned
    evaluated = _cli("evaluate", "--model", str(out / "student"), "--data",
                     str(ROOT / "kd_helpers" / "data" / "reviews" / "test.csv"), "--json")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]


def test_torchrun_trainer_fast(tmp_path):
    """The Trainer path: the same global batch on 1 or 2 processes. accelerate evens out the last step by repeating
    rows from the start of the epoch's order, so with 390 rows (24 steps of 16 + 6) 10 rows are seen twice."""
    single, ddp = tmp_path / "one", tmp_path / "two"
    done = _cli("trainer", "--fast", "--train-rows", "390", "--output-dir", str(single))
    assert done.returncode == 0, done.stderr[-3000:]
    done = _launch("-m", "kd_helpers", "trainer", "--fast", "--train-rows", "390", "--output-dir", str(ddp))
    assert done.returncode == 0, done.stderr[-3000:]
    one = json.loads((single / "results.json").read_text())
    two = json.loads((ddp / "results.json").read_text())
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert sorted(p.name for p in ddp.iterdir()) == ["results.json", "student"]
    first, second = two["first_epoch_rows"]
    assert len(first) == len(second) == 200  # 25 steps of 8 rows on each process
    assert set(first) | set(second) == set(range(390))  # every row
    assert len(first) + len(second) - 390 == 10  # and exactly accelerate's padding twice
    assert abs(one["student_after_accuracy"] - two["student_after_accuracy"]) <= ACCURACY_TOLERANCE
