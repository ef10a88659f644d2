"""Small datasets that need no download: digits, MNIST-1D, modular arithmetic, a synthetic graph."""

from jaxlearn.data._dataset import Dataset, split_train_test
from jaxlearn.data.digits import load_digits
from jaxlearn.data.graph import Graph, stochastic_block_model
from jaxlearn.data.label_noise import symmetric_label_noise, with_label_noise
from jaxlearn.data.mnist1d import load_mnist1d
from jaxlearn.data.modular import modular_arithmetic, one_hot_pairs
from jaxlearn.data.continual import merge as merge_tasks, split_by_class, split_digits

__all__ = [
    "Dataset",
    "split_train_test",
    "load_digits",
    "Graph",
    "stochastic_block_model",
    "symmetric_label_noise",
    "with_label_noise",
    "load_mnist1d",
    "modular_arithmetic",
    "one_hot_pairs",
    "merge_tasks",
    "split_by_class",
    "split_digits",
]
