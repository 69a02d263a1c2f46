"""Notebook 05's experiment: CE-only vs logit KD vs logit + feature losses, the same budget and seeds.

The tiny student (:func:`kd_helpers.models.make_tiny_student`) trains on the labelled training rows for
``steps`` optimizer steps; every method sees the same batches, learning-rate schedule and initial weights per
seed. The teacher's hidden states and attention maps come from :class:`~kd_helpers.features.TeacherFeatures`
(one teacher pass, cached on disk). Results are kept in a JSON file, written atomically after each (method,
seed): a rerun resumes, and the notebook's widget reads the runs from it.

File layout (``kind: "kd_helpers.features/1"``)::

    {"key": {...}, "teacher_test_accuracy": 0.906, "runs": {"ce": RUN, "logit": RUN, "logit+hidden": RUN, ...}}
    RUN = {"weights": {"hidden", "cosine", "attention"}, "alpha": 0.7 (0 for CE-only),
           "per_seed": {"1": {"test_accuracy", "correct": "0110...", "history": [...], "steps": [...],
                              "seconds"}, ...}}
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import DataCollatorWithPadding, get_linear_schedule_with_warmup, set_seed

from kd_helpers import stats
from kd_helpers.cache import atomic_write_json, cache_key, load_tensor, read_json_checked, save_tensor
from kd_helpers.config import cache_dir
from kd_helpers.data import fingerprint
from kd_helpers.errors import KDError, NonFiniteLossError
from kd_helpers.experiment import Setup, new_student, teacher_test_accuracy
from kd_helpers.features import (
    FeatureWeights,
    HiddenProjection,
    TeacherFeatures,
    feature_step,
    forward_features,
    layer_map,
    live_teacher_features,
    num_layers,
    use_eager_attention,
)
from kd_helpers.loss import DistillationLoss
from kd_helpers.models import state_dict_sha256, tokenizer_sha256
from kd_helpers.train import make_optimizer, optimizer_name
from kd_helpers.transfer import evaluate, predictions

KIND = "kd_helpers.features/1"
REPO = Path(__file__).resolve().parents[1]
SEEDS = (1, 2, 3)
STEPS, EVALS = 400, 8  # ~4 epochs of the 3,118 labelled rows, in batches of 32; 8 evaluations per run
STEP_STRIDE = 4  # per-step losses are stored every 4th step
# The comparison of notebook 05, in order: name -> (alpha on the KL term, feature weights)
METHODS = {
    "ce": (0.0, FeatureWeights()),
    "logit": (0.7, FeatureWeights()),
    "logit+hidden": (0.7, FeatureWeights(hidden=1.0)),
    "logit+hidden+attention": (0.7, FeatureWeights(hidden=1.0, attention=1.0)),
}


@dataclass
class FeatureSetup:
    """The tiny-student setup plus the teacher's features for every training row."""

    setup: Setup
    features: TeacherFeatures
    pairs: list
    seconds: float  # building or loading the features
    test_loader: object = None


def features_key(setup: Setup, pairs: list) -> str:
    """What the cached teacher states depend on: the teacher's weights, its tokenizer, the exact rows, the map."""
    return cache_key(kind="features", weights=state_dict_sha256(setup.teacher),
                     tokenizer=tokenizer_sha256(setup.teacher_tokenizer), data=fingerprint(setup.splits["train"]),
                     rows=len(setup.train_set), max_length=setup.config.max_length, pairs=pairs)


def prepare_features(setup: Setup, log: Callable = print) -> FeatureSetup:
    """Check that teacher and student tokenise alike (token positions must line up), then load or compute the
    teacher's states for the training rows (one pass sorted by length; cached under ``KD_CACHE_DIR``)."""
    probe = list(setup.splits["train"]["text"][:50])
    if (setup.teacher_tokenizer.get_vocab() != setup.tokenizer.get_vocab()
            or setup.teacher_tokenizer(probe)["input_ids"] != setup.tokenizer(probe)["input_ids"]):
        raise KDError("feature losses compare token by token: the teacher and the student must tokenise alike "
                      "(their vocabularies or token ids differ here)")
    start = time.perf_counter()
    student_layers = num_layers(new_student(setup, kind="tiny", seed=0))
    pairs = layer_map(student_layers, num_layers(setup.teacher))
    use_eager_attention(setup.teacher)
    key = features_key(setup, pairs)
    folder = cache_dir() / "features"
    lengths = [len(ids) for ids in setup.train_set["input_ids"]]
    cfg = setup.teacher.config
    shape = dict(pairs=len(pairs), width=cfg.hidden_size, heads=cfg.num_attention_heads)
    paths = {name: folder / f"{key}-{name}.safetensors" for name in ("hidden", "attention")}
    try:
        if not all(path.exists() for path in paths.values()):
            raise FileNotFoundError
        features = TeacherFeatures.from_flat({n: load_tensor(p, key) for n, p in paths.items()}, lengths, **shape)
    except (FileNotFoundError, ValueError) as exc:
        if not isinstance(exc, FileNotFoundError):
            log(f"teacher features cache is unusable ({exc}); recomputing")
        collate = DataCollatorWithPadding(setup.teacher_tokenizer, return_tensors="pt")
        features = TeacherFeatures.compute(setup.teacher, setup.train_set, collate, pairs, setup.device)
        for name, tensor in features.flat().items():
            save_tensor(paths[name], tensor, key)
    return FeatureSetup(setup, features, pairs, time.perf_counter() - start)


def train_run(fs: FeatureSetup, alpha: float, weights: FeatureWeights, seed: int, steps: int = STEPS,
              evals: int = EVALS, temperature: float = 4.0, lr: float | None = None,
              live_teacher: bool = False) -> tuple:
    """Train one tiny student for ``steps`` steps (the seed's batch order), evaluating ``evals`` times.

    Returns ``(student, history, step_losses)``. ``live_teacher=True`` runs the teacher forward every step
    instead of reading its cached states (the same numbers, slower: kept to measure the difference).
    """
    setup = fs.setup
    device = setup.device
    student = new_student(setup, kind="tiny", seed=seed)
    if weights.attention > 0:
        use_eager_attention(student)
    width = student.config.hidden_size
    projection = HiddenProjection(width, setup.teacher.config.hidden_size, len(fs.pairs)).to(device)
    set_seed(seed)
    params = [p for p in student.parameters() if p.requires_grad]
    if weights.hidden > 0:
        params += list(projection.parameters())
    optimizer = make_optimizer(params, lr or setup.config.lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(0.1 * steps), steps)
    criterion = DistillationLoss(temperature, alpha)
    loader = setup.train_loader(seed=seed)
    batches = itertools.islice(itertools.chain.from_iterable(loader for _ in itertools.count()), steps)
    marks = {round(steps * (i + 1) / evals) for i in range(evals)}
    history, step_losses, since = [], [], []
    student.train()
    for step, batch in enumerate(batches, 1):
        teacher_logits = setup.cached_teacher(batch)
        if live_teacher:
            hidden, attention = live_teacher_features(setup.teacher, batch, fs.pairs, device)
        else:
            hidden, attention = fs.features(batch["idx"], batch["input_ids"].shape[1])
        total, parts = feature_step(student, batch, teacher_logits, hidden, attention, criterion, weights,
                                    fs.pairs, projection, device)
        if not np.isfinite(parts["total_loss"]):
            raise NonFiniteLossError(f"non-finite loss at step {step} ({parts}); lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        scheduler.step()
        since.append(parts)
        if step % STEP_STRIDE == 0:
            step_losses.append({"step": step, **{k: round(v, 5) for k, v in parts.items()}})
        if step in marks:
            accuracy = evaluate(student, setup.val_loader, device)
            student.train()
            means = {k: float(np.mean([p[k] for p in since])) for k in since[0]}
            history.append({"step": step, **means, "accuracy": accuracy})
            since = []
    return student, history, step_losses


def results_key(fs: FeatureSetup, steps: int, evals: int) -> dict:
    setup, cfg = fs.setup, fs.setup.config
    return {"student": "tiny", "data": cfg.data, "train_data": fingerprint(setup.splits["train"]),
            "test_data": fingerprint(setup.splits["test"]), "teacher": setup.teacher_id, "steps": int(steps),
            "evals": int(evals), "batch_size": cfg.batch_size, "lr": cfg.lr, "max_length": cfg.max_length,
            "temperature": 4.0, "pairs": [list(p) for p in fs.pairs], "fast": cfg.fast,
            "optimizer": optimizer_name(setup.device)}


def default_results_path(config) -> Path:
    """Full mode in a checkout: the file notebook 05 ships with; otherwise a file under ``output_dir``."""
    if config.fast or not ((REPO / "notebooks").is_dir() and (REPO / "kd_helpers").is_dir()):
        return Path(config.output_dir) / ("features_results_fast.json" if config.fast else "features_results.json")
    return REPO / "notebooks" / "data" / "features_results.json"


def open_results(fs: FeatureSetup, path: str | Path, steps: int = STEPS, evals: int = EVALS,
                 log: Callable = print) -> dict:
    """Resume the results in ``path`` when they were made with this setup; otherwise start new ones (a
    full-mode file of another setup is never overwritten: ``KDError``)."""
    path, key = Path(path), results_key(fs, steps, evals)
    if path.exists():
        try:
            results = read_json_checked(path)
            if results.get("kind") == KIND and results.get("key") == key:
                return {**results, "path": str(path)}
            if not results.get("key", {}).get("fast", True) and not fs.setup.config.fast:
                raise KDError(f"{path} holds runs of another setup; pass another --results file")
        except ValueError as exc:
            log(f"{path} is unreadable ({exc}); starting it again")
    results = {"kind": KIND, "key": key, "steps": int(steps), "evals": int(evals), "runs": {},
               "teacher_test_accuracy": teacher_test_accuracy(fs.setup),
               "test_rows": len(fs.setup.splits["test"])}
    save(results, path)
    return results


def save(results: dict, path: str | Path) -> None:
    atomic_write_json(path, {k: v for k, v in results.items() if k != "path"})
    results["path"] = str(path)


def method_name(alpha: float, weights: FeatureWeights) -> str:
    return "ce" if alpha == 0 and not weights.any else weights.name()


def train_and_store(fs: FeatureSetup, results: dict, alpha: float, weights: FeatureWeights, seed: int,
                    log: Callable = print):
    """Train one (method, seed), test it, store it in ``results`` (and its file); returns the student."""
    start = time.perf_counter()
    student, history, steps = train_run(fs, alpha, weights, seed, results["steps"], results["evals"])
    predicted, labels = predictions(student, _test_loader(fs), fs.setup.device)
    right = (predicted == labels).numpy()
    name = method_name(alpha, weights)
    run = results["runs"].setdefault(name, {"weights": asdict(weights), "alpha": alpha, "per_seed": {}})
    run["per_seed"][str(seed)] = {"test_accuracy": float(right.mean()), "correct": "".join("01"[int(r)] for r in right),
                                  "history": history, "steps": steps,
                                  "seconds": round(time.perf_counter() - start, 1)}
    if results.get("path"):
        save(results, results["path"])
    log(f"  {name:24s} seed {seed}: test accuracy {right.mean():.4f} ({time.perf_counter() - start:.0f} s)")
    return student


def run_comparison(fs: FeatureSetup, results: dict, methods: dict = METHODS, seeds: Sequence[int] = SEEDS,
                   log: Callable = print) -> dict:
    """Train every (method, seed) not yet in ``results`` (stored as it goes). Returns the students trained for
    the first seed, by method name (a resumed run may have none)."""
    students = {}
    for (alpha, weights), seed in itertools.product(methods.values(), seeds):
        name = method_name(alpha, weights)
        if str(seed) not in results["runs"].get(name, {}).get("per_seed", {}):
            student = train_and_store(fs, results, alpha, weights, seed, log=log)
            if seed == seeds[0]:
                students[name] = student
    return students


def _test_loader(fs: FeatureSetup):
    from kd_helpers.data import make_loader, tokenize

    if fs.test_loader is None:
        setup = fs.setup
        if "test" not in setup.splits:
            raise KDError("this data has no test split: notebook 05's comparison reports test accuracy")
        fs.test_loader = make_loader(tokenize(setup.splits["test"], setup.tokenizer, setup.config.max_length),
                               setup.tokenizer, batch_size=64)
    return fs.test_loader


def correct_matrix(run: dict, seeds: Sequence[int]) -> np.ndarray:
    """``(seeds, test rows)`` booleans: which test rows each seed's student got right."""
    return np.array([[c == "1" for c in run["per_seed"][str(s)]["correct"]] for s in seeds])


def summary(results: dict, reference: str = "logit") -> list[dict]:
    """One row per method: test accuracy mean ± sd over the seeds every method has, and the paired test
    (pooled McNemar over seeds, paired bootstrap of the seed-mean difference) against ``reference`` and CE-only."""
    runs = results["runs"]
    seeds = sorted(set.intersection(*[set(map(int, r["per_seed"])) for r in runs.values()])) if runs else []
    rows = []
    for name, run in runs.items():
        accs = [run["per_seed"][str(s)]["test_accuracy"] for s in seeds]
        mean, sd = stats.mean_sd(accs) if accs else (float("nan"), 0.0)
        row = {"method": name, "mean": mean, "sd": sd, "n": len(accs), "per_seed": accs}
        for other in ("ce", reference):
            if other != name and other in runs and seeds:
                a, b = correct_matrix(run, seeds), correct_matrix(runs[other], seeds)
                row[f"vs_{other}"] = {"difference": float(a.mean() - b.mean()),
                                      "p_value": stats.pooled_mcnemar(list(zip(a, b, strict=True)))["p_value"],
                                      "bootstrap": stats.paired_bootstrap(a.mean(0), b.mean(0))}
        rows.append(row)
    return rows


def format_summary(results: dict) -> str:
    """The comparison as a Markdown table (what notebook 05 and ``python -m kd_helpers features`` print)."""
    lines = [f"teacher (test): {100 * results['teacher_test_accuracy']:.1f} %, {results['test_rows']} test rows, "
             f"{results['steps']} steps of {results['key']['batch_size']} per student", "",
             "| method | test accuracy, mean ± sd | per seed | vs logit KD [95 % CI], McNemar p | vs CE-only, p |",
             "|---|---|---|---|---|"]
    for row in summary(results):
        def versus(other, row=row):
            v = row.get(f"vs_{other}")
            if not v:
                return "–"
            boot = v["bootstrap"]
            return (f"{100 * v['difference']:+.1f} [{100 * boot['low']:+.1f}, {100 * boot['high']:+.1f}], "
                    f"p = {v['p_value']:.2g}")
        seeds = ", ".join(f"{100 * a:.1f}" for a in row["per_seed"])
        lines.append(f"| {row['method']} | {100 * row['mean']:.1f} ± {100 * row['sd']:.1f} % ({row['n']} seeds) | "
                     f"{seeds} | {versus('logit')} | {versus('ce')} |")
    return "\n".join(lines)


def mean_history(run: dict, seeds: Sequence[int]) -> list[dict]:
    """A run's validation curve averaged over ``seeds``, with ``accuracy_sd`` (the band the plots draw)."""
    histories = [run["per_seed"][str(s)]["history"] for s in seeds if str(s) in run["per_seed"]]
    if not histories:
        return []
    out = []
    for points in zip(*histories, strict=True):
        accuracy = [p["accuracy"] for p in points]
        out.append({"step": points[0]["step"], "accuracy": float(np.mean(accuracy)),
                    "accuracy_sd": stats.mean_sd(accuracy)[1]})
    return out


def mean_steps(run: dict, seeds: Sequence[int]) -> list[dict]:
    """A run's stored per-step losses averaged over ``seeds``."""
    steps = [run["per_seed"][str(s)]["steps"] for s in seeds if str(s) in run["per_seed"]]
    if not steps:
        return []
    return [{"step": rows[0]["step"], **{k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "step"}}
            for rows in zip(*steps, strict=True)]


@torch.inference_mode()
def layer_probe(model, train_set, val_set, collate, device, rows: int = 1000, batch_size: int = 64) -> list[float]:
    """What each layer carries about sentiment: a logistic regression on every layer's mean-pooled states
    (``rows`` training rows), scored on the validation rows. One accuracy per ``hidden_states`` entry."""
    from sklearn.linear_model import LogisticRegression

    def pooled(dataset):
        layers, labels = None, []
        for start in range(0, len(dataset), batch_size):
            batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            out = forward_features(model, batch, device, attentions=False)
            mask = batch["attention_mask"].to(device)[..., None].float()
            means = [((h * mask).sum(1) / mask.sum(1)).cpu() for h in out.hidden_states]
            layers = means if layers is None else [torch.cat(p) for p in zip(layers, means, strict=True)]
            labels.append(batch["labels"])
        return [x.numpy() for x in layers], torch.cat(labels).numpy()

    model.eval()
    train_x, train_y = pooled(train_set.select(range(min(rows, len(train_set)))))
    val_x, val_y = pooled(val_set)
    return [float(LogisticRegression(max_iter=2000).fit(x, train_y).score(v, val_y))
            for x, v in zip(train_x, val_x, strict=True)]
