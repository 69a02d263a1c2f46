"""Started by tests/test_parallel.py under ``torchrun``: one epoch of ``distill_ddp`` with a dropout-free tiny student.

Usage: ddp_worker.py MODEL_DIR OUT_FILE. The main process saves the final weights and the accuracy to OUT_FILE.
"""

import sys

import torch
from accelerate import Accelerator

from kd_helpers.parallel import distill_ddp, evaluate_model_ddp, shard_loader


def setting(model_dir: str):
    """The student, cached teacher, loaders: identical in the test process and in every worker."""
    from torch import nn
    from transformers import set_seed

    from kd_helpers.data import load_splits, make_loader, subsample, tokenize
    from kd_helpers.models import load_classifier, load_tokenizer
    from kd_helpers.train import CachedTeacher

    set_seed(0)
    tokenizer = load_tokenizer(model_dir)
    splits = load_splits("reviews")
    train = tokenize(subsample(splits["train"], 61, 0), tokenizer, 32)  # 8 batches of 8 (last: 5 rows)
    val = tokenize(subsample(splits["validation"], 37, 0), tokenizer, 32)
    student = load_classifier(model_dir)
    for module in student.modules():  # no dropout: processes' masks would differ from the single-process run
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    teacher = CachedTeacher(torch.randn(len(train), 2, generator=torch.Generator().manual_seed(1)) * 2)
    train_loader = make_loader(train, tokenizer, 8, shuffle=True, seed=3)
    val_loader = make_loader(val, tokenizer, 8)
    return student, teacher, train_loader, val_loader


def main(model_dir: str, out_file: str) -> None:
    accelerator = Accelerator(cpu=True)
    student, teacher, train_loader, val_loader = setting(model_dir)
    before = evaluate_model_ddp(accelerator, student, shard_loader(val_loader, accelerator))
    wrapped, run, rows = distill_ddp(accelerator, student, teacher, train_loader, val_loader, epochs=2, lr=1e-3,
                                     log=lambda *a: None)
    from accelerate.utils import gather_object

    shards = gather_object([rows[0]])
    if accelerator.is_main_process:
        weights = {k: v.detach().cpu() for k, v in accelerator.unwrap_model(wrapped).state_dict().items()}
        torch.save({"weights": weights, "history": run.history, "before": before, "shards": shards,
                    "world_size": accelerator.num_processes}, out_file)
    accelerator.end_training()


if __name__ == "__main__":
    main(*sys.argv[1:3])
