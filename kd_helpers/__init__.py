"""kd_helpers: teacher-student knowledge distillation for text classification, in small readable pieces.

The notebooks import from the modules directly (``from kd_helpers.loss import DistillationLoss``); the names
below are re-exported for convenience.
"""

from kd_helpers.config import KDConfig
from kd_helpers.errors import KDError
from kd_helpers.loss import DistillationLoss
from kd_helpers.train import distill, evaluate_model, train_epoch

__version__ = "0.1.0"
__all__ = ["DistillationLoss", "KDConfig", "KDError", "distill", "evaluate_model", "train_epoch", "__version__"]
