"""Training-loop helpers shared by experiments, tests and benchmarks."""

from jaxlearn.train.loop import FitResult, RunState, classifier, fit, grid
from jaxlearn.train.models import MLP, mlp
from jaxlearn.train.progress import progress_bar
from jaxlearn.train.results import experiment_main, experiment_parser, new_figure, save_result

__all__ = [
    "FitResult",
    "RunState",
    "classifier",
    "fit",
    "grid",
    "MLP",
    "mlp",
    "progress_bar",
    "experiment_main",
    "experiment_parser",
    "new_figure",
    "save_result",
]
