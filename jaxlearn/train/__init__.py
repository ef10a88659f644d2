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
from jaxlearn.train.step import TrainState, TrainingStep, gradient_step, keep_if_finite

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
]
