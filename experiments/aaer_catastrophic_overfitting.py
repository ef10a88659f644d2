"""Catastrophic overfitting of FGSM-RS adversarial training on digits, and AAER against it.

Lin et al. (arXiv:2404.08154) claim that single-step adversarial training (FGSM with a random
start, FGSM-RS) suffers catastrophic overfitting (CO) at large perturbation budgets: within a few
iterations the robust accuracy against multi-step attacks (PGD) collapses towards 0 while the
accuracy against the single-step attack it trains on stays high; the number of abnormal
adversarial examples (AAEs: examples whose loss *decreases* after the FGSM step) rises with it.
AAER, which regularizes the AAEs' number and output variation, is claimed to eliminate CO.

Setup at CPU scale, following the official script where it applies: the digits scaled to [0, 1],
an MLP (64 -> 256 -> 256 -> 10, ReLU), SGD with momentum 0.9 and weight decay 5e-4, the cyclic
learning rate (linear from 0 to 0.05 over the first 2/5 of the steps, then back to 0), batch 64,
40 epochs, FGSM-RS as in the script (start U(-2 eps, 2 eps), step alpha = 1.0 eps, no projection,
inputs clipped to [0, 1], the 5-epoch step warm-up), several budgets eps. Plain FGSM-RS is
`jaxlearn.train.aaer` with lambda1 = 0; AAER uses the official lambda1..3 = 1, 4, 1.5; both see
the same initializations, minibatches and random starts. Every epoch the test split is attacked
with FGSM (from zero, step eps) and PGD-10 (random start, step eps / 4, projected); the fraction
of AAEs per training step is logged.

Criteria (fixed in advance): a run has CO when its final PGD-10 accuracy is below half of its
best PGD-10 accuracy during training while its final FGSM accuracy is at least 0.3 higher than the
final PGD-10 one. The claim is undecided (None) if plain FGSM-RS shows CO at no budget (in no
seed); otherwise it holds if, at every budget where FGSM-RS has CO in a majority of seeds, AAER
has CO in no seed and a higher mean final PGD-10 accuracy.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlearn.data import load_digits
from jaxlearn.experiments._shared import fast_compile_when_quick
from jaxlearn.train import aaer, experiment_main, mlp, new_figure, save_result

NAME = "aaer_catastrophic_overfitting"
HIDDEN = (256, 256)
METHODS = ("fgsm_rs", "aaer")
LABELS = {"fgsm_rs": "FGSM-RS", "aaer": "AAER"}


def numpy_init(hidden, num_classes, seed, num_inputs=64):
  """The MLP's parameters (flax layout), LeCun-normal kernels and zero biases, drawn by NumPy."""
  rng = np.random.default_rng(seed)
  sizes = (num_inputs, *hidden, num_classes)
  return {f"Dense_{i}": {"kernel": (rng.normal(size=(a, b)) / np.sqrt(a)).astype(np.float32),
                         "bias": np.zeros(b, np.float32)}
          for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))}


def cyclic_lr(peak: float, total: int) -> optax.Schedule:
  up = int(0.4 * total)
  return optax.join_schedules(
      [optax.linear_schedule(0.0, peak, up), optax.linear_schedule(peak, 0.0, total - up)], [up])


def train(data, *, hidden, epsilons, epochs, batch, seeds, peak_lr, pgd_steps):
  _, apply_fn = mlp((64,), hidden, data.num_classes)
  x_train, y_train = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
  x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
  steps_per_epoch = len(data.y_train) // batch
  total = epochs * steps_per_epoch

  def model_fn(params, x, y):
    logits = apply_fn(params, x)
    return optax.losses.softmax_cross_entropy_with_integer_labels(logits, y), logits

  def mean_loss(params, x, y):
    return jnp.mean(model_fn(params, x, y)[0])

  def accuracy(params, x):
    return jnp.mean(jnp.argmax(apply_fn(params, x), -1) == y_test)

  def attacks(params, eps, key):
    """(clean, FGSM, PGD) test accuracy; FGSM from zero with step eps, PGD with a random start."""
    input_grad = jax.grad(mean_loss, argnums=1)
    fgsm = jnp.clip(x_test + eps * jnp.sign(input_grad(params, x_test, y_test)), 0.0, 1.0)
    delta = jax.random.uniform(key, x_test.shape, minval=-eps, maxval=eps)
    delta = jnp.clip(x_test + delta, 0.0, 1.0) - x_test

    def pgd_step(delta, _):
      g = input_grad(params, x_test + delta, y_test)
      delta = jnp.clip(delta + 0.25 * eps * jnp.sign(g), -eps, eps)
      return jnp.clip(x_test + delta, 0.0, 1.0) - x_test, None

    delta, _ = jax.lax.scan(pgd_step, delta, None, length=pgd_steps)
    return accuracy(params, x_test), accuracy(params, fgsm), accuracy(params, x_test + delta)

  def one_run(lambda1, eps, params, indices, key):
    optimizer = optax.chain(optax.add_decayed_weights(5e-4),
                            optax.sgd(cyclic_lr(peak_lr, total), momentum=0.9))
    training = aaer(model_fn, optimizer, epsilon=eps, alpha=1.0, lambda1=lambda1,
                    warmup_steps=5 * steps_per_epoch, clip_min=0.0, clip_max=1.0)
    state = training.init(params, key)
    step_keys, eval_keys = jax.random.split(key)
    step_keys = jax.random.split(step_keys, total).reshape(epochs, steps_per_epoch, -1)

    def train_step(state, inputs):
      idx, k = inputs
      state, metrics = training.step(state, (x_train[idx], y_train[idx]), k)
      return state, (metrics["loss"], metrics["abnormal_fraction"], metrics["skipped"])

    def epoch(state, inputs):
      idx, keys, eval_key = inputs
      state, logs = jax.lax.scan(train_step, state, (idx, keys))
      return state, (logs, attacks(state.params, eps, eval_key))

    epoch_indices = indices.reshape(epochs, steps_per_epoch, batch)
    _, (logs, accs) = jax.lax.scan(
        epoch, state, (epoch_indices, step_keys, jax.random.split(eval_keys, epochs)))
    loss, abnormal, skipped = logs  # (epochs, steps_per_epoch): keep the epoch means
    clean, fgsm, pgd = accs
    return {"loss": loss.mean(-1), "abnormal_fraction": abnormal.mean(-1),
            "skipped_steps": jnp.sum(skipped), "clean": clean, "fgsm": fgsm, "pgd": pgd}

  params = [numpy_init(hidden, data.num_classes, s) for s in seeds]
  params = jax.tree.map(lambda *leaves: jnp.stack(leaves), *params)
  indices = np.stack([
      np.concatenate([np.random.default_rng([s, e]).permutation(len(data.y_train))[
          :steps_per_epoch * batch] for e in range(epochs)]) for s in seeds])
  keys = jnp.stack([jax.random.PRNGKey(s) for s in seeds])
  lambdas = jnp.asarray([0.0, 1.0], jnp.float32)  # FGSM-RS, AAER
  eps_values = jnp.asarray(epsilons, jnp.float32)
  over_seeds = jax.vmap(one_run, in_axes=(None, None, 0, 0, 0))
  over_eps = jax.vmap(over_seeds, in_axes=(None, 0, None, None, None))
  over_methods = jax.vmap(over_eps, in_axes=(0, None, None, None, None))
  out = jax.jit(over_methods)(lambdas, eps_values, params, jnp.asarray(indices), keys)
  out = jax.tree.map(np.asarray, out)  # leaves (method, eps, seed, ...)
  return {m: jax.tree.map(lambda a, i=i: a[i], out) for i, m in enumerate(METHODS)}


def has_co(result) -> np.ndarray:
  """(eps, seed) booleans: final PGD < half its best, and final FGSM >= final PGD + 0.3."""
  pgd, fgsm = result["pgd"], result["fgsm"]
  return (pgd[..., -1] < 0.5 * pgd.max(-1)) & (fgsm[..., -1] >= pgd[..., -1] + 0.3)


@fast_compile_when_quick
def run(quick: bool, out: Path, seed: int) -> dict:
  start = time.perf_counter()
  data = load_digits(seed=0)
  config = dict(
      epsilons=[0.3] if quick else [0.1, 0.2, 0.25, 0.3], epochs=2 if quick else 40, batch=64,
      hidden=[32] if quick else list(HIDDEN), peak_lr=0.05, momentum=0.9, weight_decay=5e-4,
      alpha=1.0, lambdas=[1.0, 4.0, 1.5], warmup_epochs=5, pgd_steps=2 if quick else 10,
      pgd_step="eps / 4", input_range=[0.0, 1.0],
  )
  seeds = [seed] if quick else [seed + i for i in range(3)]
  results = train(data, hidden=tuple(config["hidden"]), epsilons=config["epsilons"],
                  epochs=config["epochs"], batch=config["batch"], seeds=seeds,
                  peak_lr=config["peak_lr"], pgd_steps=config["pgd_steps"])
  co = {m: has_co(r) for m, r in results.items()}
  fgsm_co_budgets = [i for i in range(len(config["epsilons"]))
                     if co["fgsm_rs"][i].mean() > 0.5]
  if not co["fgsm_rs"].any():
    claim_held = None
  else:
    claim_held = bool(fgsm_co_budgets) and all(
        not co["aaer"][i].any()
        and results["aaer"]["pgd"][i, :, -1].mean() > results["fgsm_rs"]["pgd"][i, :, -1].mean()
        for i in fgsm_co_budgets)
  parts = []
  for i, eps in enumerate(config["epsilons"]):
    cells = []
    for m in METHODS:
      r = results[m]
      cells.append(
          f"{LABELS[m]} clean {r['clean'][i, :, -1].mean():.3f}, FGSM "
          f"{r['fgsm'][i, :, -1].mean():.3f}, PGD-10 {r['pgd'][i, :, -1].mean():.3f} (best "
          f"during training {r['pgd'][i].max(-1).mean():.3f}), CO in "
          f"{int(co[m][i].sum())}/{len(seeds)} seeds, "
          f"AAE fraction in the last epoch {r['abnormal_fraction'][i, :, -1].mean():.3f}")
    parts.append(f"eps = {eps}: " + "; ".join(cells))
  measured = (f"Final test accuracies over {len(seeds)} seeds after {config['epochs']} epochs "
              f"(chance level 0.10). " + " | ".join(parts) + ".")
  for i in fgsm_co_budgets:
    best_pgd = results["fgsm_rs"]["pgd"][i].max(-1).mean()
    aaer_pgd = results["aaer"]["pgd"][i, :, -1].mean()
    if best_pgd < 0.2 or aaer_pgd < 0.2:
      measured += (
          f" At eps = {config['epsilons'][i]} the collapse is of the FGSM-PGD gap rather than of "
          f"a substantial robust accuracy: FGSM-RS's best PGD-10 accuracy was {best_pgd:.3f} "
          f"and AAER ends at {aaer_pgd:.3f}, both within twice the chance level, so AAER "
          f"prevents the distortion without producing a robust model at that budget.")
  if claim_held is None:
    measured += " Plain FGSM-RS showed no catastrophic overfitting here, so the claim is undecided."
  fig, axes = new_figure(ncols=len(config["epsilons"]), width=4.5)
  epochs_axis = np.arange(1, config["epochs"] + 1)
  for i, eps in enumerate(config["epsilons"]):
    ax = axes[0, i]
    for m, color in zip(METHODS, ("tab:red", "tab:blue")):
      ax.plot(epochs_axis, results[m]["pgd"][i].mean(0), color=color, label=f"{LABELS[m]} PGD-10")
      ax.plot(epochs_axis, results[m]["fgsm"][i].mean(0), color=color, linestyle="--",
              label=f"{LABELS[m]} FGSM")
    ax.set(xlabel="epoch", ylabel="test accuracy", title=f"eps = {eps}", ylim=(0, 1))
  axes[0, 0].legend(fontsize=7)
  return save_result(
      NAME,
      out,
      claim=(
          "Single-step adversarial training (FGSM-RS) suffers catastrophic overfitting at large "
          "budgets (PGD accuracy collapses while FGSM accuracy stays high), and AAER eliminates "
          "it."
      ),
      measured=measured,
      claim_held=claim_held,
      config=config,
      metrics={
          **{f"{m}_{k}": v for m, r in results.items() for k, v in r.items()},
          **{f"{m}_catastrophic_overfitting": v for m, v in co.items()},
          "fgsm_rs_co_majority_budgets": [config["epsilons"][i] for i in fgsm_co_budgets],
      },
      seeds=seeds,
      wall_time_s=time.perf_counter() - start,
      figure=fig,
      quick=quick,
  )


def main(argv=None):
  return experiment_main(run, __doc__, argv)


if __name__ == "__main__":
  main()
