"""Self-normalizing networks: a 32-layer MLP on digits, SELU + LeCun vs ReLU + He (and + BN).

Tests the claims of arXiv:1706.02515 at CPU scale: (1) with SELU and LeCun-normal weights the
activations of a deep feed-forward net stay near mean 0 and variance 1 layer after layer,
without any normalization layer; (2) such deep nets train.

Setup: scikit-learn digits (64 pixels, standardized with the training statistics; 1150 train /
288 validation / 359 test), an MLP of 32 hidden layers of width 64 and a dense read-out. Variants:
`selu_lecun` (SELU, `lecun_normal` weights: the SNN), `relu_he` (ReLU, `he_normal`), `relu_bn`
(ReLU, `he_normal`, BatchNorm before every ReLU). Biases start at 0. No dropout (AlphaDropout is
tested in tests/nn/test_selu.py). SGD with momentum 0.9, learning rate swept over a 4-point grid,
2 seeds (vmapped by `jaxlearn.train.fit`); the rate with the best mean validation accuracy is
selected and its TEST accuracy reported.

Activation statistics: for every hidden layer, the mean and the variance of all its post-
activation values (pooled over the 359 test images and the 64 units), at initialization and
after training (seed 0, selected rate). BatchNorm uses batch statistics at initialization (what
training sees) and its running statistics after training.

Decision rule, fixed before running: the claim holds when (1) at initialization every SELU layer
has |mean| < 0.15 and variance in [0.7, 1.3], and (2) the SNN's test accuracy is at least that of
ReLU + He minus 1 point. ReLU + BN is the reference of what normalization buys.
Writes selu_deep_mlp.json and selu_deep_mlp.png.
"""

from __future__ import annotations

import time
from pathlib import Path

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlearn.data import Dataset, load_digits
from jaxlearn.experiments._shared import fast_compile_when_quick, validation_split
from jaxlearn.train import experiment_main, fit, grid, new_figure, save_result

DEPTH, WIDTH = 32, 64
LRS = (0.001, 0.003, 0.01, 0.03)
VARIANTS = {  # name -> (activation, initializer, batch norm)
    "selu_lecun": ("selu", "lecun", False),
    "relu_he": ("relu", "he", False),
    "relu_bn": ("relu", "he", True),
}
INITIALIZERS = {"lecun": linen.initializers.lecun_normal(), "he": linen.initializers.he_normal()}
MEAN_BOUND, VAR_BOUNDS, TOLERANCE = 0.15, (0.7, 1.3), 0.01


class DeepMLP(linen.Module):
  """`depth` x [Dense -> (BatchNorm) -> activation], then a dense read-out."""

  depth: int
  activation: str
  initializer: str
  batch_norm: bool
  width: int = WIDTH

  @linen.compact
  def __call__(self, x, train: bool):
    act = jax.nn.selu if self.activation == "selu" else jax.nn.relu
    hidden = []
    for _ in range(self.depth):
      x = linen.Dense(self.width, kernel_init=INITIALIZERS[self.initializer])(x)
      if self.batch_norm:
        x = linen.BatchNorm(use_running_average=not train, momentum=0.9)(x)
      x = act(x)
      hidden.append(x)
    return linen.Dense(10)(x), hidden


def _standardize(data: Dataset) -> Dataset:
  mean, std = data.x_train.mean(0), data.x_train.std(0)
  std = np.where(std > 0, std, 1.0)
  return data._replace(x_train=(data.x_train - mean) / std, x_test=(data.x_test - mean) / std)


def _layer_stats(hidden):
  """(means, variances) of every layer's post-activation values, pooled over samples and units."""
  hidden = [np.asarray(h, np.float64) for h in hidden]
  return np.array([h.mean() for h in hidden]), np.array([h.var() for h in hidden])


@fast_compile_when_quick
def run(quick: bool, out: Path, seed: int) -> dict:
  data = _standardize(load_digits(flat=True, seed=seed))
  tuning = validation_split(data, 0.2, seed)
  depth = 2 if quick else DEPTH
  steps, eval_every = (10, 10) if quick else (900, 300)
  lrs = LRS[1:2] if quick else LRS
  seeds = [seed] if quick else [seed, seed + 1]
  variants = {k: v for k, v in VARIANTS.items() if not quick or k != "relu_bn"}

  start = time.perf_counter()
  results, curves = {}, {}
  for name, (activation, init, batch_norm) in variants.items():
    model = DeepMLP(depth, activation, init, batch_norm)

    def init_fn(key, model=model):
      variables = model.init(key, jnp.zeros((1, 64)), train=False)
      return variables["params"], variables.get("batch_stats", {})

    def loss_fn(params, stats, x, y, model=model):
      (logits, _), updates = model.apply({"params": params, "batch_stats": stats}, x, train=True,
                                         mutable=["batch_stats"])
      loss = optax.losses.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      return loss, updates.get("batch_stats", stats)

    def eval_fn(params, stats, x, y, model=model):
      logits, _ = model.apply({"params": params, "batch_stats": stats}, x, train=False)
      return {"accuracy": jnp.mean(jnp.argmax(logits, -1) == y)}

    result = fit(loss_fn, init_fn, lambda learning_rate: optax.sgd(learning_rate, momentum=0.9),
                 tuning, steps=steps, eval_every=eval_every, batch_size=64,
                 configs=grid(learning_rate=lrs), seeds=seeds, eval_fn=eval_fn, has_state=True,
                 progress=False, desc=name)
    val_acc = result.final("test_accuracy").mean(axis=1)  # fit's "test" split is validation
    best = int(np.argmax(np.nan_to_num(val_acc, nan=-1.0)))
    test_acc = jax.jit(jax.vmap(lambda p, s: eval_fn(p, s, data.x_test, data.y_test)["accuracy"]))(
        result.state.params, result.state.model_state)
    test_acc = np.asarray(test_acc).reshape(len(lrs), len(seeds))[best]

    # Activation statistics of seed 0: at initialization (BN: batch statistics) and trained.
    def hidden_of(variables, train, model=model):
      out = model.apply(variables, data.x_test, train=train, mutable=["batch_stats"])
      return out[0][1]

    hidden_of = jax.jit(hidden_of, static_argnums=1)
    params0, stats0 = jax.jit(init_fn)(jax.random.key(seeds[0]))
    # BN at initialization: batch statistics (what training sees); the others: one program.
    hidden_init = hidden_of({"params": params0, "batch_stats": stats0}, batch_norm)
    run_index = best * len(seeds)
    params = jax.tree.map(lambda a: a[run_index], result.state.params)
    stats = jax.tree.map(lambda a: a[run_index], result.state.model_state)
    hidden_trained = hidden_of({"params": params, "batch_stats": stats}, False)
    mean_init, var_init = _layer_stats(hidden_init)
    mean_trained, var_trained = _layer_stats(hidden_trained)
    results[name] = {
        "learning_rate": lrs[best],
        "validation_accuracy_per_lr": val_acc,
        "test_accuracy": float(test_acc.mean()),
        "test_accuracy_per_seed": test_acc,
        "final_train_loss": float(result.final("train_loss")[best].mean()),
        "layer_mean_init": mean_init, "layer_var_init": var_init,
        "layer_mean_trained": mean_trained, "layer_var_trained": var_trained,
    }
    curves[name] = (result.eval_steps, result.history["test_accuracy"][best].mean(axis=0))
  wall_time = time.perf_counter() - start

  snn = results["selu_lecun"]
  normalized_at_init = bool(np.all(np.abs(snn["layer_mean_init"]) < MEAN_BOUND)
                            and np.all(snn["layer_var_init"] >= VAR_BOUNDS[0])
                            and np.all(snn["layer_var_init"] <= VAR_BOUNDS[1]))
  trains = snn["test_accuracy"] >= results["relu_he"]["test_accuracy"] - TOLERANCE
  held = normalized_at_init and trains

  fig, axes = new_figure(ncols=3, width=4.2)
  layers = np.arange(1, depth + 1)
  for name, r in results.items():
    for ax, key in ((axes[0, 0], "mean"), (axes[0, 1], "var")):
      line, = ax.plot(layers, r[f"layer_{key}_init"], marker=".", label=f"{name} init")
      ax.plot(layers, r[f"layer_{key}_trained"], linestyle="--", color=line.get_color(),
              label=f"{name} trained")
    axes[0, 2].plot(*curves[name], marker=".", label=f"{name} (lr {r['learning_rate']:g})")
  axes[0, 0].set(xlabel="hidden layer", ylabel="mean of activations", title="activation mean")
  axes[0, 1].set(xlabel="hidden layer", ylabel="variance of activations", yscale="log",
                 title="activation variance")
  axes[0, 2].set(xlabel="step", ylabel="validation accuracy", title=f"{depth}-layer MLP, digits")
  for ax in axes[0]:
    ax.legend(fontsize=6)

  def describe(name):
    r = results[name]
    return (f"{name}: test acc {r['test_accuracy']:.3f} (lr {r['learning_rate']:g}); layer "
            f"{depth} at init mean {r['layer_mean_init'][-1]:.3f} var "
            f"{r['layer_var_init'][-1]:.3g},"
            f" trained mean {r['layer_mean_trained'][-1]:.3f} var "
            f"{r['layer_var_trained'][-1]:.3g}")

  measured = (
      "; ".join(describe(n) for n in results)
      + f". SELU at init: max |mean| {np.abs(snn['layer_mean_init']).max():.3f}, variance in "
      f"[{snn['layer_var_init'].min():.3f}, {snn['layer_var_init'].max():.3f}] over the {depth} "
      f"layers (bounds |mean| < {MEAN_BOUND}, var in {list(VAR_BOUNDS)}: {normalized_at_init}); "
      f"SNN test accuracy >= ReLU+He - {TOLERANCE:.0%}: {trains}."
  )
  return save_result(
      "selu_deep_mlp", out,
      claim=("With SELU activations and LeCun-normal weights, activations of a deep feed-forward "
             "net converge towards mean 0 and variance 1 across layers (self-normalization), and "
             "deep SNNs train."),
      measured=measured,
      claim_held=held,
      config={"data": "digits 64 standardized pixels (1150 train / 288 validation / 359 test)",
              "model": f"MLP {depth} x Dense({WIDTH}) + read-out", "variants": VARIANTS,
              "optimizer": "SGD momentum 0.9", "learning_rates": list(lrs), "steps": steps,
              "batch_size": 64, "selection": "best mean validation accuracy; test reported",
              "activation_statistics": "pooled over test images and units, seed 0",
              "dropout": "none"},
      metrics={"test_accuracy": {n: r["test_accuracy"] for n, r in results.items()},
               "selu_normalized_at_init": normalized_at_init, "selu_trains": trains,
               "runs": results},
      seeds=seeds, wall_time_s=wall_time, figure=fig, quick=quick,
  )


def main(argv=None):
  return experiment_main(run, __doc__, argv)


if __name__ == "__main__":
  main()
