"""NeuralNDCG vs a pointwise and a listwise loss on synthetic learning to rank.

Pobrotyn & Białobrzeski (arXiv:2102.07831) claim that NeuralNDCG, which optimises NDCG through a
differentiable sort (NeuralSort + Sinkhorn), is competitive with the state-of-the-art
learning-to-rank losses (and beats earlier direct NDCG optimisers).

Setup: slates of 10 items (0 to 3 of them padding, label -1), 16 Gaussian features per item, a
hidden relevance r = x.w + 0.5 (x.v)^2 + N(0, 0.25) (|w| = |v| = 1), quantised into grades
0..4 by the training set's quantiles. The scorer is an MLP (16 -> 32 -> 1, tanh). Three losses,
everything else equal (Adam, lr 1e-2, 64 slates per step, the same steps and seeds, vmapped over
seeds): jaxlearn's `neural_ndcg` (allRank defaults: tau = 1, no truncation, gains 2^y - 1),
pointwise MSE on the grades, and optax's listwise `ranking_softmax_loss`. Test metric: the exact
NDCG@5 of `jaxlearn.losses.ndcg` on held-out slates. "Competitive" is read, before running, as:
NeuralNDCG's mean test NDCG@5 within 0.01 of the best of the other two, or above it.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlearn.experiments._shared import fast_compile_when_quick
from jaxlearn.losses import ndcg, neural_ndcg
from jaxlearn.train import experiment_main, new_figure, save_result

NAME = "neural_ndcg_ranking"
FEATURES, SLATE, HIDDEN, GRADES = 16, 10, 32, 5
LEARNING_RATE, BATCH = 1e-2, 64
TOLERANCE = 0.01


def make_slates(rng, num_slates, w, v, edges=None):
  x = rng.normal(size=(num_slates, SLATE, FEATURES)).astype(np.float32)
  relevance = x @ w + 0.5 * (x @ v) ** 2 + 0.5 * rng.normal(size=(num_slates, SLATE))
  if edges is None:
    edges = np.quantile(relevance, np.linspace(0, 1, GRADES + 1)[1:-1])
  labels = np.digitize(relevance, edges).astype(np.float32)
  padded = np.arange(SLATE)[None, :] >= SLATE - rng.integers(0, 4, size=(num_slates, 1))
  labels[padded] = -1
  return x, labels, edges


def _init(key):
  k1, k2 = jax.random.split(key)
  return {
      "w1": jax.random.normal(k1, (FEATURES, HIDDEN)) / np.sqrt(FEATURES),
      "b1": jnp.zeros(HIDDEN),
      "w2": jax.random.normal(k2, (HIDDEN,)) / np.sqrt(HIDDEN),
  }


def _scores(params, x):
  return jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"]


def _mse(scores, labels):
  valid = labels >= 0
  return jnp.sum(jnp.where(valid, (scores - labels) ** 2, 0)) / jnp.sum(valid)


def _softmax_listwise(scores, labels):
  return optax.losses.ranking_softmax_loss(scores, jnp.maximum(labels, 0), where=labels >= 0,
                                           reduce_fn=jnp.mean)


LOSSES = {
    "neural_ndcg": lambda scores, labels: neural_ndcg(scores, labels),
    "mse": _mse,
    "softmax_listwise": _softmax_listwise,
}


def _train(loss_name, data, keys, steps, eval_every):
  """(train losses, test NDCG@5 every `eval_every` steps, NaN elsewhere), vmapped over keys."""
  loss_fn = LOSSES[loss_name]
  optimizer = optax.adam(LEARNING_RATE)

  def one_seed(key, data):  # the data as an argument: no constant folding of the test set
    x_train, y_train, x_test, y_test = data
    init_key, data_key = jax.random.split(key)
    params = _init(init_key)
    state = optimizer.init(params)

    def step(carry, index):
      params, state = carry
      batch = jax.random.randint(jax.random.fold_in(data_key, index), (BATCH,), 0,
                                 x_train.shape[0])
      objective = lambda p: loss_fn(_scores(p, x_train[batch]), y_train[batch])
      value, grads = jax.value_and_grad(objective)(params)
      updates, state = optimizer.update(grads, state, params)
      params = optax.apply_updates(params, updates)
      test = jnp.where(index % eval_every == eval_every - 1,
                       jnp.mean(ndcg(_scores(params, x_test), y_test, k=5)), jnp.nan)
      return (params, state), (value, test)

    (params, _), (values, tests) = jax.lax.scan(step, (params, state), jnp.arange(steps))
    return values, tests

  return jax.vmap(one_seed, in_axes=(0, None))(keys, data)


@fast_compile_when_quick
def run(quick: bool, out: Path, seed: int) -> dict:
  start = time.time()
  steps, eval_every = (6, 3) if quick else (1500, 50)
  num_train, num_test = (128, 64) if quick else (1024, 1024)
  seeds = [seed, seed + 1] if quick else [seed + i for i in range(4)]
  rng = np.random.default_rng(seed)
  w, v = rng.normal(size=FEATURES), rng.normal(size=FEATURES)
  w, v = w / np.linalg.norm(w), v / np.linalg.norm(v)
  x_train, y_train, edges = make_slates(rng, num_train, w, v)
  x_test, y_test, _ = make_slates(rng, num_test, w, v, edges)
  data = tuple(map(jnp.asarray, (x_train, y_train, x_test, y_test)))
  keys = jax.vmap(jax.random.key)(jnp.asarray(seeds))

  # One program for the three trainings (one compilation).
  everything = jax.jit(lambda keys, data: {
      name: _train(name, data, keys, steps, eval_every) for name in LOSSES})
  curves, finals = {}, {}
  for name, (values, tests) in everything(keys, data).items():
    tests = np.asarray(tests)[:, eval_every - 1::eval_every]
    curves[name] = {"train_loss": np.asarray(values)[:, ::eval_every].tolist(),
                    "test_ndcg5": tests.tolist()}
    finals[name] = tests[:, -1]
  # The oracle: NDCG@5 of the true relevance order (ties broken by position), for scale.
  ideal = float(np.mean(np.asarray(ndcg(y_test + 0.0, y_test, k=5))))
  means = {name: float(np.mean(v)) for name, v in finals.items()}
  best_other = max(means["mse"], means["softmax_listwise"])
  competitive = means["neural_ndcg"] >= best_other - TOLERANCE
  claim_held = None if quick else bool(competitive)

  fig, axes = new_figure(ncols=2, width=5.0, height=3.6)
  eval_steps = np.arange(eval_every, steps + 1, eval_every)
  for name in LOSSES:
    curve = np.asarray(curves[name]["test_ndcg5"])
    axes[0, 0].plot(eval_steps, curve.mean(0), label=name)
    axes[0, 0].fill_between(eval_steps, curve.min(0), curve.max(0), alpha=0.2)
  axes[0, 0].set_xlabel("step")
  axes[0, 0].set_ylabel("test NDCG@5")
  axes[0, 0].legend()
  names = list(LOSSES)
  axes[0, 1].bar(names, [means[n] for n in names],
                 yerr=[np.std(finals[n]) for n in names], capsize=4)
  axes[0, 1].set_ylim(min(means.values()) - 0.05, max(means.values()) + 0.03)
  axes[0, 1].set_title(f"final test NDCG@5 ({len(seeds)} seeds)")
  fig.tight_layout()

  measured = (
      f"{steps} steps, {len(seeds)} seeds, {num_train} training / {num_test} test slates. Final "
      "test NDCG@5 (mean +- std over seeds): "
      + ", ".join(f"{n} {means[n]:.4f} +- {np.std(finals[n]):.4f}" for n in names)
      + f". NeuralNDCG minus the best other: {means['neural_ndcg'] - best_other:+.4f} "
      f"(competitive = within {TOLERANCE}: {competitive})."
  )
  return save_result(
      NAME,
      out,
      claim=(
          "NeuralNDCG, a differentiable relaxation of NDCG, is competitive with state-of-the-art "
          "learning-to-rank losses (here: optax's listwise softmax loss and pointwise MSE)."
      ),
      measured=measured,
      claim_held=claim_held,
      config={
          "features": FEATURES, "slate_length": SLATE, "padding_per_slate": "0-3", "grades": GRADES,
          "relevance": "x.w + 0.5 (x.v)^2 + N(0, 0.25), quantised by training quantiles",
          "scorer": f"MLP {FEATURES}-{HIDDEN}-1 tanh", "optimizer": "adam",
          "learning_rate": LEARNING_RATE, "batch_slates": BATCH, "steps": steps,
          "eval_every": eval_every, "neural_ndcg": {"temperature": 1.0, "k": None,
                                                   "powered_relevancies": True},
          "competitive_tolerance": TOLERANCE, "n_train": num_train, "n_test": num_test,
      },
      metrics={
          "final_test_ndcg5": {n: finals[n].tolist() for n in names},
          "final_test_ndcg5_mean": means,
          "oracle_test_ndcg5": ideal,
          "curves": curves,
          "eval_steps": eval_steps.tolist(),
      },
      seeds=seeds,
      wall_time_s=time.time() - start,
      figure=fig,
      quick=quick,
  )


def main(argv=None):
  return experiment_main(run, __doc__, argv)


if __name__ == "__main__":
  main()
