"""Experiment scripts, installed as `jaxlearn.experiments` and run with `jaxlearn run NAME`."""
