"""A training job for the kill-and-resume test: python _train_worker.py OUT [--checkpoint DIR]
[--slow SECONDS].

Trains a small MLP with AdamW for 240 steps (12 chunks of 20), checkpointing after every chunk
when --checkpoint is given, sleeping --slow seconds after each chunk (so that the test can kill it
mid-run), and writes the final parameters and metric history to OUT (.npz) when it finishes.
"""

import argparse
import time
from pathlib import Path

import jax
import numpy as np
import optax

from jaxlearn.data import load_digits
from jaxlearn.train import classifier, fit, grid, mlp
from jaxlearn.train.checkpoint import Checkpointer

STEPS, EVERY = 240, 20


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("out", type=Path)
  parser.add_argument("--checkpoint", type=Path)
  parser.add_argument("--slow", type=float, default=0.0)
  args = parser.parse_args()

  data = load_digits()
  init_params, apply_fn = mlp((64,), (32,), data.num_classes)
  loss_fn, eval_fn = classifier(apply_fn)

  def make(learning_rate, weight_decay):
    return optax.adamw(learning_rate, weight_decay=weight_decay)

  def report(step, metrics):
    print(f"step {step} train_loss {metrics['train_loss'].mean():.6f}", flush=True)
    time.sleep(args.slow)

  checkpoint = None if args.checkpoint is None else Checkpointer(args.checkpoint, every=EVERY)
  if checkpoint is not None:
    print(f"existing checkpoints: {checkpoint.all_steps()}", flush=True)
  result = fit(
      loss_fn, init_params, make, data, steps=STEPS, eval_every=EVERY, batch_size=32,
      configs=grid(learning_rate=[1e-3, 1e-2], weight_decay=[1e-4]), seeds=[0, 1],
      eval_fn=eval_fn, progress=False, checkpoint=checkpoint, callback=report,
  )
  if checkpoint is not None:
    checkpoint.close()
  leaves = jax.tree.leaves(jax.device_get((result.state.params, result.state.opt_state)))
  np.savez(args.out, *leaves, **{f"history_{k}": v for k, v in result.history.items()})
  print("finished", flush=True)


if __name__ == "__main__":
  main()
