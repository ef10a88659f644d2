"""Losses and regularizers: pure functions of logits/labels."""
