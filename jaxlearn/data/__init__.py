"""Small datasets that need no download: digits, MNIST-1D, modular arithmetic, a synthetic graph."""

from jaxlearn.data._dataset import Dataset, split_train_test
from jaxlearn.data.digits import load_digits

__all__ = ["Dataset", "split_train_test", "load_digits"]
