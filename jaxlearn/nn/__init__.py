"""Flax layers: normalization and reparametrizations. NNX classes here; Linen ones in `jaxlearn.nn.linen`."""
