"""Training-loop helpers shared by experiments, tests and benchmarks.

Submodules for scale: `jaxlearn.train.sweep` (`sweep.sweep(...)`: hyperparameter sweeps),
`jaxlearn.train.parallel` (device meshes, multi-host), `jaxlearn.train.checkpoint`.
`jaxlearn.train.step` defines the `training_step` protocol (`TrainingStep`, `gradient_step`).
"""

from jaxlearn.train.loop import FitResult, RunState, classifier, fit, grid, stateful_classifier
from jaxlearn.train.models import MLP, mlp
from jaxlearn.train.progress import progress_bar
from jaxlearn.train.results import experiment_main, experiment_parser, new_figure, save_result
from jaxlearn.train.checkpoint import Checkpointer, CorruptCheckpointWarning
from jaxlearn.train.parallel import make_mesh
from jaxlearn.train.sweep import LogUniform, SweepResult, Uniform, random_search
from jaxlearn.train.step import (
    TrainState, TrainingStep, apply_guarded, gradient_step, keep_if_finite,
)
from jaxlearn.train.highway_bp import (
    HighwayParams, highway_bp, highway_value_and_grad, residual_loss,
)
from jaxlearn.train.gradcache import (
    cached_value_and_grad, gradcache, gradcache_contrastive, in_batch_contrastive_loss,
)
from jaxlearn.train.gradnorm import GradNormState, gradnorm, gradnorm_loss
from jaxlearn.train.wgan_gp import gradient_penalty, interpolate_gradient_norms, wgan_gp
from jaxlearn.train.gradient_regularization import (
    finite_difference_grad_reg, gradient_regularized_grad,
)
from jaxlearn.train.fish import fish
from jaxlearn.train.udim import udim, udim_inconsistency
from jaxlearn.train.aaer import aaer, aaer_regularizer
from jaxlearn.train.representational_alignment import (
    alignment_loss, layer_mapping, linear_cka, representation_guidance,
)

__all__ = [
    "FitResult",
    "RunState",
    "classifier",
    "fit",
    "grid",
    "stateful_classifier",
    "MLP",
    "mlp",
    "progress_bar",
    "experiment_main",
    "experiment_parser",
    "new_figure",
    "save_result",
    "Checkpointer",
    "CorruptCheckpointWarning",
    "make_mesh",
    "LogUniform",
    "SweepResult",
    "Uniform",
    "random_search",
    "TrainState",
    "TrainingStep",
    "gradient_step",
    "keep_if_finite",
    "apply_guarded",
    "highway_bp",
    "HighwayParams",
    "highway_value_and_grad",
    "residual_loss",
    "finite_difference_grad_reg",
    "gradient_regularized_grad",
    "GradNormState",
    "gradnorm",
    "gradnorm_loss",
    "cached_value_and_grad",
    "gradcache",
    "gradcache_contrastive",
    "in_batch_contrastive_loss",
    "gradient_penalty",
    "interpolate_gradient_norms",
    "wgan_gp",
    "fish",
    "udim",
    "udim_inconsistency",
    "aaer",
    "aaer_regularizer",
    "representation_guidance",
    "alignment_loss",
    "layer_mapping",
    "linear_cka",
]
