"""Benchmark: every registered optimizer's step against optax, PyTorch and the bandwidth floor.

An optimizer step over elementwise state is memory-bound: its floor is the bytes it must move
(read params, gradients and each state buffer once, write params and each state buffer once)
divided by the memory bandwidth. For every registered optimizer alias (registry kind
"optimizer", built from the alias with a learning rate; a record's `update_extras`, which come
from a loss and a batch, make it skipped with the reason, as does any error while building it),
on a ~10M-parameter tree of realistic leaves (Dense kernels 1024x4096, 4096x1024, 1024x1024,
HWIO conv kernels, biases and a norm scale), this measures, side by side in one run:

- the jitted update-and-apply step, params and state donated (as a training loop runs it);
- `optax.adamw`, and the optax alias of the same algorithm where the registry lists one;
- the pytorch-optimizer class the record names (`pytorch_optimizer`), with and without
  `foreach` (the faster is reported), on tensors of the same sizes in PyTorch's layout;
- torch's fused AdamW;
- the bandwidth floor of each optimizer: a jitted step on ITS OWN donated buffers that reads
  params, gradients and every state buffer once and writes params and every state buffer once
  (`p + 0 g`, `s * 1`: the values do not change), i.e. exactly the ideal byte count.

Every side runs once per round, rounds interleaved (the order rotates), so a change in the
machine's load hits every side alike; PyTorch gets as many threads as XLA uses. The report
gives min and median ms per step and, per optimizer, the median of the per-round (paired)
ratios. XLA's own count of the bytes the compiled step accesses (cost analysis; deterministic)
is compared with the ideal, and the kernels over the largest leaf are listed as the HLO evidence
of where extra bytes go (`tests/optim/test_step_cost.py` guards the ratios in CI). Time beyond
the bytes has two usual causes on XLA:CPU, also reported: transcendental functions (Ranger21's
softplus: exp and log1p per element), and full-size temporary buffers, which XLA:CPU allocates
afresh at every execution: above glibc's mmap threshold (32 MB at most) they come back as new
pages, one page fault per 4 kB per step (`temp_bytes_per_param`, `page_faults_per_step`); the
steps that page-fault are timed again against their floor with glibc keeping freed memory
(`keep_freed_memory`, after every other timing), which shows what the faults cost. Last, a
leaf-count sweep compiles each step on trees of 10 to 1,000 leaves ((32, 32) kernels and
biases) and reports compile seconds (process CPU time, so other processes' load counts less)
against optax.adamw's (at the largest count, the minimum of two compiles of each, alternated)
and how they grow, with the number of kernels compiled (`kernel_count`:
each fusion, copy or unfused op is its own LLVM function on XLA:CPU, and compile time follows
that count). The goal is compile time within 1.5x of optax.adamw's at 1,000 leaves; a step that
needs documented passes beyond one per buffer needs a kernel for each, so it is held instead to
optax.adamw's time for as many kernels: optax.adamw compiled on a tree with that many more
leaves (`compile_at_matched_kernels`). Time per kernel at the same leaf count would not do:
XLA:CPU's compile time grows faster than its kernel count (optax.adamw alone: 2.8 ms per kernel
at 1,000 leaves, 3.9 at 3,000, 5.7 at 4,000), so a step with more kernels pays more per kernel
for the same kernels. The bytes, floor and compile goals are for elementwise
steps (at least one float of state per parameter, a handful of flops per parameter); matrix
steps (Newton-Schulz iterations, SVDs, solves per leaf) and low-rank ones (Fira, whose time
follows its rank) are held to the comparisons with PyTorch and optax only.

--quick is a smoke run of the machinery: two optimizers with PyTorch counterparts on a ~40k
parameter tree, three rounds, a 10-leaf sweep.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import math
import os
import re
import resource
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlearn import registry
from jaxlearn.train import experiment_main, new_figure, save_result
from jaxlearn.train.compare import required_arguments
from jaxlearn._compile import fast_compile_options

LEARNING_RATE = 1e-3
NUM_ITERATIONS = 10_000  # for aliases that need a run length (Ranger21's schedule)
BASELINE = "optax.adamw"
LEAF_COUNTS = (10, 100, 300, 1000)
SWEEP_LIMIT_S = 120.0  # a compile predicted to take longer is skipped (and reported)
COMPILE_REPEATS = 2  # compiles of each side at an optimizer's largest count (minimum kept)
SLOW_STEP_S = 2.0  # a side slower than this per step is timed in fewer rounds
# --quick compiles with XLA:CPU's fast-compile options (LLVM -O0, classic emitters, one codegen
# thread; as the optimizer battery): several times faster, and the same HLO, so the same bytes.

# Where an optimizer's step cannot come within 1.5x of its ideal bytes on XLA:CPU: the passes it
# needs beyond one per buffer (XLA:CPU has no multi-output fusion, so each output is its own
# kernel re-reading its inputs, and each reduction is its own pass). The numbers are bytes per
# float32 parameter; the kernels listed in each row are the evidence.
EXTRA_PASSES = {
    BASELINE: "one kernel per output: m (12) + v (12) + params reading p, m, v (16) = 40",
    "jaxlearn.optim.adamp": (
        "m (12) + v (12) + the direction d written once for the per-channel sums and the "
        "update (12; a temporary buffer holding one large leaf at a time: recomputed inside "
        "the sums' reduction instead, XLA:CPU runs its sqrt and divisions as scalar code, ~10x "
        "slower) + the per-channel sums g.w, |g|^2, |w|^2, w.d as one variadic "
        "reduction reading g, w, d (12, +2 for its 16-row block sums) + params reading w, d "
        "(12) = 62"),
    "jaxlearn.optim.sgdp": (
        "buffer (12) + the per-channel sums g.w, |g|^2, |w|^2, w.b as one variadic reduction "
        "reading g, w, b (12, +2 for its 16-row block sums) + params reading w, b (12) = 38"),
    "jaxlearn.optim.adapnm": (
        "five outputs, one kernel each: two momenta, v, max v (12 each) and params reading p "
        "and three state buffers (20) = 68. Each state kernel must read its old buffer (an old "
        "buffer read after its new value overwrote it in place is copied first), and the "
        "direction needs both momenta and max v: 68 is the minimum without multi-output fusion"),
    "jaxlearn.optim.adams": (
        "Adam's 40 plus the mean of v over all parameters (4), which every update needs before "
        "any parameter can be written"),
    "jaxlearn.optim.dasgo": (
        "momentum (12) and params (12), one kernel each, and the per-row sums of g^2 (for the "
        "diagonal v) and of M^2 (for ||U||_F, which scales every update, so both reductions "
        "run before any parameter is written) (4 each) = 32"),
    "jaxlearn.optim.grams": (
        "Adam's 40, and the update reads the gradient too, for its sign (+4)"),
    "jaxlearn.optim.ranger21": (
        "AdaPNM's 68; the fused AGC, centralization and normalization read g twice (unit sums, "
        "then unit spreads: the spread needs the mean) and w once, shared with the norm loss "
        "(12); stable weight decay's mean of v (4); Lookahead's update, a select fused into the "
        "params kernel, reads the slow weights (4), and the conditional that copies the params "
        "into them after a synchronising step (8) is counted by XLA although it runs one step "
        "in five = 96. Its time is partly compute: the softplus denominator's exp and log per "
        "element (log(1 + exp(-y)), not log1p: twice as fast fused on XLA:CPU)"),
    "jaxlearn.optim.xgrad_adam": (
        "Adam's m and v (12 each), the direction m/(sqrt(v)+eps) written once (12) and read by "
        "two kernels, the stored update -lr*d (8) and the params (12) = 56: the update is an "
        "output of its own (the prediction needs it next step), so it is one more kernel"),
    "jaxlearn.optim.xgrad_adamw": (
        "xgrad_adam's 56 and a copy of the donated params (8: the stored update reads p for "
        "the decoupled decay, and XLA:CPU's copy insertion copies p before the parameter "
        "kernel overwrites it in place) = 68"),
    "jaxlearn.optim.optimistic_amsgrad": (
        "theta (12); the history, a ring of span + 1 slots (the last gradient and span "
        "negated differences), written in place in two slots: g subtracted from the previous "
        "gradient's slot by a scatter-add (12) and g written over the oldest difference (8) "
        "(the kernel listing charges each the whole ring, though XLA writes it in place); the "
        "Gram matrices' new row, the dot products of the new difference with the slots, one "
        "variadic reduction over the minor axis reading the slots (24; the other entries are "
        "kept from earlier steps); after ONE batched solve for all leaves, the prediction, a "
        "weighted sum of the slots: XLA:CPU fuses it into both its consumers, v reading g, "
        "the slots and v (36) and the pending step reading theta, g, the slots and sqrt(max "
        "v) (40), written in place over the older of its two slots (the parameter kernel "
        "reads both: with one buffer, the new step overwrote the old one still to be read, "
        "and XLA copied both, 16 more and two temporary buffers); sqrt(max v), kept as the "
        "root in the state (12); the params reading p, theta, it and both pending slots (24) "
        "= 168 (XLA counts 172) against the ideal 100, which counts all span + 1 ring slots "
        "and both pending slots read and written. Leaves small enough to stay in cache write "
        "the difference once instead (180: tests/optim/test_step_cost.py)"),
    "jaxlearn.optim.fira": (
        "a matrix step (the ideal counts params and gradients: the state is low rank): per "
        "matrix the projection G P^T reads G (4), the residual's Frobenius norm reads G again "
        "(4: the growth limiter needs it before any parameter moves; XLA fuses the rank-r "
        "product into that reduction), the parameter kernel reads p and G and writes p (12, "
        "the back-projection fused as r outer products) = 20, the low-rank state and the "
        "vectors' Adam (0.6); and XLA counts the projector refresh, the larger branch of its "
        "conditional though it runs one step in T = 200: G copied into LAPACK's column-major "
        "layout (8) and read by the SVD (4) = 32.6. Its time beyond the bytes is arithmetic: "
        "the projection, the residual's norm and the parameter kernel each apply the rank-r "
        "projector to every element (2r flops per element each: XLA counts 60 flops per "
        "parameter, against optax.adamw's 15)"),
}


def parameter_shapes(quick: bool) -> dict[str, tuple[int, ...]]:
  """Flax-layout shapes: Dense (in, out), Conv HWIO, vectors; 9.9M parameters (39k quick)."""
  w = 64 if quick else 1024
  c = w // 8
  return {
      "mlp_in": (w, 4 * w), "mlp_out": (4 * w, w), "attention": (w, w),
      "conv_1": (3, 3, c, c), "conv_2": (3, 3, c, 2 * c),
      "mlp_in_bias": (4 * w,), "mlp_out_bias": (w,), "attention_bias": (w,),
      "conv_1_bias": (c,), "conv_2_bias": (2 * c,), "norm_scale": (w,),
  }


def to_torch_layout(x: np.ndarray) -> np.ndarray:
  """A new contiguous copy of a Flax-layout array in PyTorch's: Linear (out, in), Conv OIHW."""
  axes = {2: (1, 0), 4: (3, 2, 0, 1)}.get(x.ndim, tuple(range(x.ndim)))
  return np.ascontiguousarray(np.transpose(x, axes)).copy()


def random_tree(shapes, seed: int = 0) -> tuple[dict, dict]:
  """Parameters and gradients as NumPy float32 (fixed seed: every side gets the same)."""
  rng = np.random.default_rng(seed)
  params = {n: rng.normal(size=s).astype(np.float32) for n, s in shapes.items()}
  grads = {n: (1e-2 * rng.normal(size=s)).astype(np.float32) for n, s in shapes.items()}
  return params, grads


def leaf_tree(num_leaves: int) -> dict:
  """`num_leaves` leaves: (32, 32) kernels and (32,) biases, as abstract arrays."""
  spec = lambda shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  return {f"layer_{i:04d}": {"kernel": spec((32, 32)), "bias": spec((32,))}
          for i in range(num_leaves // 2)}


# ---------------------------------------------------------------------------------------------
# Building the optimizers from the registry.


def build_rows(quick: bool) -> tuple[list[dict], dict[str, str]]:
  """[{symbol, make, method}] for optax.adamw, then every registered alias that builds; and
  {symbol: why not} for the others."""
  rows, skipped = [{"symbol": BASELINE, "make": lambda: optax.adamw(LEARNING_RATE),
                    "method": None}], {}
  aliases = registry.optimizer_aliases()
  if quick:  # a smoke run: two optimizers with PyTorch counterparts
    aliases = [(m, s) for m, s in aliases if s in m.pytorch_optimizer][:2]
  for method, symbol in aliases:
    if method.update_extras:
      skipped[symbol] = (f"its update needs {', '.join(method.update_extras)}, built from a "
                         "loss and a batch; this benchmark steps on fixed synthetic gradients")
      continue
    factory = registry.resolve(symbol)
    make = (lambda f: lambda: f(LEARNING_RATE, **required_arguments(f, NUM_ITERATIONS)))(factory)
    try:
      jax.eval_shape(make().init, {"w": jax.ShapeDtypeStruct((4, 3), jnp.float32)})
    except Exception as error:  # pylint: disable=broad-except  # reported, not fatal
      skipped[symbol] = f"cannot build with a learning rate alone: {error}".splitlines()[0]
      continue
    rows.append({"symbol": symbol, "make": make, "method": method})
  return rows, skipped


def optax_counterpart(row: dict, symbols: set[str]) -> str | None:
  """The optax alias registered with the same method, for a jaxlearn alias (e.g. optax.lion)."""
  method = row["method"]
  if method is None or row["symbol"].startswith("optax."):
    return None
  candidates = [s for s in method.symbols if s.startswith("optax.") and s in symbols]
  return candidates[0] if candidates else None


# ---------------------------------------------------------------------------------------------
# The sides: a JAX step (and its bandwidth floor), a PyTorch optimizer.


def _step_fn(optimizer: optax.GradientTransformation) -> Callable:
  def step(params, state, grads):
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return step


def _floor_fn(params, state, grads, zero, one):
  """Reads params, grads and every state buffer once, writes params and every state buffer
  once: the ideal byte count of a step, with unchanged values."""
  scale = lambda x: x * one.astype(x.dtype) if jnp.issubdtype(x.dtype, jnp.inexact) else x
  new_params = jax.tree.map(lambda p, g: p + zero * g, params, grads)
  return new_params, jax.tree.map(scale, state)


def cost(compiled) -> dict[str, float]:
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return {"bytes": float(analysis.get("bytes accessed", math.nan)),
          "flops": float(analysis.get("flops", math.nan))}


_NOT_KERNELS = ("parameter", "tuple", "get-tuple-element", "constant", "bitcast")
# An HLO instruction line: its name, output shape (an array or a tuple), opcode and the rest.
_INSTRUCTION = re.compile(r"\s*(?:ROOT )?%(\S+) = (\(.*?\)|\S+) ([\w-]+)\((.*)")
_DTYPE_BYTES = {"f64": 8, "f32": 4, "s32": 4, "u32": 4, "f16": 2, "bf16": 2, "s8": 1, "u8": 1,
                "pred": 1, "s64": 8, "u64": 8}


def _shapes(shape: str) -> list[str]:
  """The array shapes in an HLO shape: itself, or a tuple's elements (a variadic reduction)."""
  return re.findall(r"\w+\[[\d,]*\]", shape)


def _shape_bytes(shape: str) -> int:
  total = 0
  for match in re.finditer(r"(\w+)\[([\d,]*)\]", shape):
    total += math.prod(int(d) for d in match.group(2).split(",") if d) * _DTYPE_BYTES.get(
        match.group(1), 4)
  return total


def leaf_kernels(hlo_text: str, shape: tuple[int, ...]) -> dict[str, Any]:
  """The compiled step's kernels that read or write the float32 leaf of `shape` (or a stack of
  it), with the bytes each accesses per element of that leaf (output plus distinct operands, as
  XLA's cost analysis counts, except that an in-place update of a slice is charged its whole
  buffer): the passes one parameter costs, and what each computes."""
  leaf = "f32[" + ",".join(map(str, shape)) + "]"
  # The leaf, or a stack of it (a history of gradients): f32[k,<its dims>].
  of_leaf = re.compile(r"f32\[(\d+,)?" + ",".join(map(str, shape)) + r"\]").fullmatch
  size = math.prod(shape)
  entry = hlo_text[hlo_text.index("\nENTRY"):].splitlines()[1:]
  shapes, kernels = {}, []
  for line in entry:
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    name, out_shape, opcode, rest = match.groups()
    shapes[name] = ", ".join(_shapes(out_shape))
    if opcode in _NOT_KERNELS:
      continue
    operands = list(dict.fromkeys(re.findall(r"%([\w.\-]+)", rest.split("), ")[0])))
    if not any(of_leaf(x) for x in _shapes(shapes[name]) + [shapes.get(o, "") for o in operands]):
      continue
    kind = re.search(r'"kind":"(\w+)"|kind=(\w+)', rest)
    op_name = re.search(r'op_name="([^"]+)"', rest)
    accessed = _shape_bytes(shapes[name]) + sum(_shape_bytes(shapes.get(o, "")) for o in operands)
    kernels.append({
        "bytes_per_param": round(accessed / size, 2), "opcode": opcode,
        "kind": next((k for k in kind.groups() if k), "") if kind else "",
        "output": shapes[name], "computes": op_name.group(1) if op_name else "",
        "reads": [shapes.get(o, "?") for o in operands if _shape_bytes(shapes.get(o, "")) > 64],
    })
  kernels.sort(key=lambda k: -k["bytes_per_param"])
  return {"leaf": leaf, "bytes_per_param": round(sum(k["bytes_per_param"] for k in kernels), 2),
          "kernels": kernels}


class JaxSide:
  """One optimizer's donated step and its bandwidth floor, on its own buffers."""

  def __init__(self, symbol: str, optimizer, params: dict, grads: dict, options=None):
    self.symbol = symbol
    self.params = jax.tree.map(jnp.array, params)  # its own buffers: they are donated
    self.grads = grads
    self.state = jax.jit(optimizer.init, compiler_options=options)(self.params)
    args = (self.params, self.state, self.grads)
    donated = lambda fn: jax.jit(fn, donate_argnums=(0, 1), compiler_options=options)
    start = time.process_time()
    self.step = donated(_step_fn(optimizer)).lower(*args).compile()
    self.compile_cpu_s = time.process_time() - start
    self.floor = donated(_floor_fn).lower(*args, jnp.float32(0), jnp.float32(1)).compile()
    self.hlo = self.step.as_text()
    self.page_faults = []  # minor page faults of each timed step (process-wide count)

  def run_step(self) -> float:
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    self.params, self.state = self.step(self.params, self.state, self.grads)
    jax.block_until_ready((self.params, self.state))
    seconds = time.perf_counter() - start
    self.page_faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
    return seconds

  def temp_bytes(self) -> int:
    """The temporary buffers XLA allocates for each execution of the step."""
    analysis = self.step.memory_analysis()
    return 0 if analysis is None else int(analysis.temp_size_in_bytes)

  def run_floor(self) -> float:
    start = time.perf_counter()
    self.params, self.state = self.floor(self.params, self.state, self.grads, jnp.float32(0),
                                         jnp.float32(1))
    jax.block_until_ready((self.params, self.state))
    return time.perf_counter() - start

  def state_bytes(self) -> int:
    return sum(x.nbytes for x in jax.tree.leaves(self.state))


# pytorch-optimizer classes that compute part of the step below float32 by default, and how to
# run their own code in float32 instead: {class: (module, function, keyword, what)}. jaxlearn
# computes in float32 or wider (its numerics policy), so the float32 run is the like-for-like
# comparison; the default run is reported beside it ("...-lowp" variants).
LOWER_PRECISION = {
    "SCION": ("pytorch_optimizer.optimizer.scion", "zero_power_via_newton_schulz_5", "dtype",
              "Newton-Schulz iterates in bfloat16"),
}
LOWP = "-lowp"


def _fira_groups(tensors):
  """pytorch-optimizer's Fira projects only the parameters of a group that names a `rank`
  (a flat list gets AdamW): its 2-D weights in one, with jaxlearn.optim.fira's defaults (the
  official package's `divide_params`: rank 8, gap 200, scale 1, "std"). It leaves conv kernels
  to AdamW, where jaxlearn projects their matrix view (4% of this tree's parameters)."""
  matrices = [t for t in tensors if t.dim() == 2]
  return [{"params": matrices, "rank": 8, "update_proj_gap": 200, "scale": 1.0,
           "projection_type": "std"},
          {"params": [t for t in tensors if t.dim() != 2]}]


# pytorch-optimizer classes that need parameter groups to run the registered algorithm.
TORCH_PARAM_GROUPS = {"Fira": _fira_groups}


def _float32_patch(class_name: str):
  """A context in which a LOWER_PRECISION class's low-precision function runs in float32."""
  import torch
  module_name, function, keyword, _ = LOWER_PRECISION[class_name]
  module = importlib.import_module(module_name)

  @contextlib.contextmanager
  def patched():
    original = getattr(module, function)
    setattr(module, function, functools.partial(original, **{keyword: torch.float32}))
    try:
      yield
    finally:
      setattr(module, function, original)

  return patched


def torch_sides(class_name: str, shapes, params, grads) -> dict[str, Callable[[], float]]:
  """`{variant: run_once}` for a pytorch-optimizer class (or "torch.AdamW(fused)"), with and
  without foreach; {} where PyTorch or the class is missing. A LOWER_PRECISION class runs in
  float32 under these names, and as it comes under the names with LOWP appended."""
  try:
    import torch
  except ImportError:
    return {}
  if class_name == "torch.AdamW(fused)":
    make, variants = torch.optim.AdamW, {"fused": {"fused": True}}
  else:
    try:
      import pytorch_optimizer
    except ImportError:
      return {}
    make = getattr(pytorch_optimizer, class_name, None)
    if make is None:
      return {}
    variants = {"foreach": {"foreach": True}, "for-loop": {"foreach": False}}
  contexts = {name: contextlib.nullcontext for name in variants}
  if class_name in LOWER_PRECISION:
    contexts = {name: _float32_patch(class_name) for name in variants}
    contexts.update({name + LOWP: contextlib.nullcontext for name in variants})
    variants.update({name + LOWP: options for name, options in variants.items()})
  sides = {}
  for variant, options in variants.items():
    tensors = []
    for name in shapes:
      tensor = torch.nn.Parameter(torch.from_numpy(to_torch_layout(params[name])))
      tensor.grad = torch.from_numpy(to_torch_layout(grads[name]))
      tensors.append(tensor)
    try:
      groups = TORCH_PARAM_GROUPS.get(class_name, list)(tensors)
      optimizer = make(groups, lr=LEARNING_RATE, **options,
                       **required_arguments(make, NUM_ITERATIONS))
    except (TypeError, ValueError, RuntimeError):  # e.g. no foreach (or fused) option
      continue

    def run_once(optimizer=optimizer, context=contexts[variant]):
      with context():
        start = time.perf_counter()
        optimizer.step()
        return time.perf_counter() - start

    sides[variant] = run_once
  return sides


# ---------------------------------------------------------------------------------------------
# Timing: every side once per round, rounds interleaved.


def interleave(sides: dict[str, Callable[[], float]], rounds: int,
               failed: dict[str, str]) -> dict[str, list[float]]:
  """Seconds per call of every side in every round; the order rotates from round to round.

  Two warm-up calls first (compiled code, allocations, PyTorch's state). A side slower than
  SLOW_STEP_S runs in the first three rounds only; one that raises goes to `failed`.
  """
  names, slow = [], set()
  for name, side in sides.items():
    try:
      if side() + side() > 2 * SLOW_STEP_S:
        slow.add(name)
      names.append(name)
    except Exception as error:  # pylint: disable=broad-except  # reported, not fatal
      failed[name] = f"{type(error).__name__}: {error}".splitlines()[0]
  times = {name: [] for name in names}
  for r in range(rounds):
    shift = r % len(names)
    for name in names[shift:] + names[:shift]:
      if name not in slow or r < 3:
        times[name].append(sides[name]())
  return times


def paired_ratio(ours: list[float], theirs: list[float]) -> float | None:
  """The median over rounds of ours / theirs, measured in the same round."""
  pairs = [a / b for a, b in zip(ours, theirs) if b > 0]
  return statistics.median(pairs) if pairs else None


# ---------------------------------------------------------------------------------------------
# Temporary buffers: the same steps with the allocator keeping its memory.

PAGE_FAULTING = 100  # page faults per step above which a step is timed again (temporaries)


def keep_freed_memory() -> bool:
  """Makes glibc's malloc keep freed memory for reuse: no mmap for large blocks, no trimming
  (`mallopt`; process-wide, irreversible here). XLA:CPU allocates a step's temporary buffers
  afresh at every execution; by default blocks above the mmap threshold (32 MB at most) are
  mapped anew and page-faulted, one fault per 4 kB, at every step. Even with this setting, a
  block above 64 MB (the largest heap of a thread's arena) requested from a thread other than the
  main one, as XLA's are, is still mapped anew at every allocation (measured: 0 faults per
  repeated 63 MB block, 17,921 per 70 MB one). False where there is no glibc."""
  import ctypes
  import ctypes.util
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    mallopt = libc.mallopt
  except (OSError, AttributeError, TypeError):
    return False
  m_trim_threshold, m_mmap_threshold, m_mmap_max = -1, -3, -4
  return all(mallopt(option, value) == 1 for option, value in (
      (m_mmap_threshold, 1 << 30), (m_trim_threshold, 1 << 30), (m_mmap_max, 0)))


def _time_without_page_faults(table, faulting: dict, rounds: int) -> None:
  """Times again, step against floor, the steps whose temporaries page-fault at every step
  (`faulting`: {symbol: JaxSide}), with `keep_freed_memory`: what their temporaries cost beyond
  their bytes. Adds `paired_ratio_vs_floor_reusing_memory` and
  `page_faults_per_step_reusing_memory` to their rows. Run after every other timing and the
  compile sweep: the allocator setting is process-wide (it slowed compiles down)."""
  if not faulting or not keep_freed_memory():
    return
  for entry in (r for r in table if r["optimizer"] in faulting):
    side = faulting[entry["optimizer"]]
    side.page_faults = []
    times = interleave({"step": side.run_step, "floor": side.run_floor}, rounds, {})
    entry["paired_ratio_vs_floor_reusing_memory"] = paired_ratio(times["step"], times["floor"])
    entry["page_faults_per_step_reusing_memory"] = statistics.median(side.page_faults[2:] or [0])
    print(f"{entry['optimizer']:<34} reusing freed memory: "
          f"{entry['paired_ratio_vs_floor_reusing_memory']:.2f}x floor, "
          f"{entry['page_faults_per_step_reusing_memory']:.0f} page faults per step "
          f"(were {entry['page_faults_per_step']:.0f})")


# ---------------------------------------------------------------------------------------------
# Compile time vs the number of leaves.


def _computations(hlo_text: str) -> dict[str, list[str]]:
  """{computation name: its instruction lines} of an HLO module's text."""
  computations, body = {}, None
  for line in hlo_text.splitlines():
    header = re.match(r"(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
    if header and not line.startswith(" "):
      body = computations.setdefault(header.group(1), [])
    elif body is not None and line.startswith(" "):
      body.append(line)
  return computations


def _anonymous(line: str) -> str:
  """An instruction without its names, metadata and backend config."""
  line = re.sub(r", (metadata|backend_config)=.*$", "", line)
  return re.sub(r"%[\w.\-]+", "%", line)


def kernel_count(hlo_text: str) -> tuple[int, int]:
  """The compiled program's kernels, and how many of them are distinct.

  Kernels: the instructions of the non-fused computations (the entry, conditional branches,
  loop bodies) other than parameters, tuples and bitcasts; on XLA:CPU each fusion, copy or
  unfused op is one kernel. Distinct: up to names (a fusion with its fused computation).
  Measured on XLA:CPU, compile time is about 2 ms per kernel plus about 30 ms per distinct
  kernel: the same kernel over many same-shaped leaves is compiled once, while one that differs
  per leaf (a slice at a different offset of a stacked buffer) is compiled for each. The time
  per kernel grows with the program (passes such as copy insertion and the thunk executor's
  dependency graph grow faster than linearly): about 3 ms at 3,000 kernels, 6 at 12,000.
  """
  computations = _computations(hlo_text)
  inner = set(re.findall(r"(?:calls|to_apply)=%?([\w.\-]+)", hlo_text))
  total, distinct = 0, set()
  for name, body in computations.items():
    if name in inner:
      continue
    for line in body:
      match = _INSTRUCTION.match(line)
      if not match or match.group(3) in _NOT_KERNELS:
        continue
      total += 1
      called = re.search(r"calls=%?([\w.\-]+)", line)
      fused = computations.get(called.group(1), []) if called else []
      distinct.add("\n".join(_anonymous(x) for x in [line] + fused))
  return total, len(distinct)


def compile_seconds(make, num_leaves: int, options=None) -> tuple[float, int, int]:
  """Process CPU seconds to compile the donated step on a `num_leaves` tree, and the compiled
  program's `kernel_count` (kernels, distinct kernels)."""
  params = leaf_tree(num_leaves)
  optimizer = make()
  state = jax.eval_shape(optimizer.init, params)
  step = jax.jit(_step_fn(optimizer), donate_argnums=(0, 1), compiler_options=options)
  start = time.process_time()
  compiled = step.lower(params, state, params).compile()
  return (time.process_time() - start, *kernel_count(compiled.as_text()))


def compile_sweep(rows, counts, options=None, repeats: int = COMPILE_REPEATS) -> dict[str, Any]:
  """Compile seconds and kernels per optimizer and leaf count; a compile predicted (linearly
  from the last count) to exceed SWEEP_LIMIT_S is skipped. One compile's CPU time varies by
  tens of percent from one moment to the next (optax.adamw's, at 1,000 leaves, from 4.4 to 7.4
  s within one run), so at an optimizer's largest count it and optax.adamw (the first row) are
  compiled `repeats` times each, alternately, and the minimum of each is kept
  (`repeated_cpu_s`, `paired_baseline_cpu_s`): interference only adds time. The seconds by
  count (and the growth exponent) are the first compile's."""
  seconds, kernels, distinct, repeated, paired = {}, {}, {}, {}, {}
  baseline = next(row for row in rows if row["symbol"] == BASELINE)
  for row in rows:
    measured = []
    for count in counts:
      if measured and measured[-1][0] * count / counts[len(measured) - 1] > SWEEP_LIMIT_S:
        break
      measured.append(compile_seconds(row["make"], count, options))
    seconds[row["symbol"]] = [t for t, _, _ in measured]
    kernels[row["symbol"]] = [k for _, k, _ in measured]
    distinct[row["symbol"]] = [d for _, _, d in measured]
    largest = counts[len(measured) - 1]
    runs, baseline_runs = [measured[-1][0]], []
    for repeat in range(repeats):
      if row is not baseline:
        baseline_runs.append(compile_seconds(baseline["make"], largest, options)[0])
      if repeat < repeats - 1:
        runs.append(compile_seconds(row["make"], largest, options)[0])
    repeated[row["symbol"]] = min(runs)
    paired[row["symbol"]] = min(baseline_runs or runs)
  base = seconds[BASELINE]
  ratio = {s: [a / b for a, b in zip(v, base)] for s, v in seconds.items()}
  growth = {}
  for symbol, values in seconds.items():
    if len(values) >= 2:  # log-log slope between the first count above 10 and the last
      i = 1 if len(values) > 2 else 0
      growth[symbol] = math.log(values[-1] / values[i]) / math.log(
          counts[len(values) - 1] / counts[i])
  return {"leaves": list(counts), "cpu_seconds": seconds, "ratio_vs_optax_adamw": ratio,
          "growth_exponent": growth, "kernels": kernels, "distinct_kernels": distinct,
          "repeated_cpu_s": repeated, "paired_baseline_cpu_s": paired}


# ---------------------------------------------------------------------------------------------
# The run.


def _xla_threads() -> int:
  """XLA:CPU's intra-op threads: one per CPU this process may run on."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def run(quick: bool, out: Path, seed: int) -> dict:
  del seed  # timings use fixed synthetic data
  start_time = time.perf_counter()
  threads = _xla_threads()
  try:
    import torch
    torch.set_num_threads(threads)
  except ImportError:
    pass
  shapes = parameter_shapes(quick)
  rounds = 3 if quick else 25
  n_params = sum(math.prod(s) for s in shapes.values())
  np_params, np_grads = random_tree(shapes)
  grads = jax.tree.map(jnp.asarray, np_grads)
  rows, skipped = build_rows(quick)
  options = fast_compile_options(quick)

  sides, jax_sides = {}, {}
  for row in rows:
    try:
      side = JaxSide(row["symbol"], row["make"](), np_params, grads, options)
    except Exception as error:  # pylint: disable=broad-except  # e.g. fails on these shapes
      skipped[row["symbol"]] = f"{type(error).__name__}: {error}".splitlines()[0]
      continue
    jax_sides[row["symbol"]] = side
    sides[row["symbol"]] = side.run_step
    sides["floor:" + row["symbol"]] = side.run_floor
  rows = [row for row in rows if row["symbol"] in jax_sides]
  torch_classes = {row["method"].pytorch_optimizer.get(row["symbol"]) for row in rows
                   if row["method"] is not None} - {None}
  for class_name in sorted(torch_classes) + ["torch.AdamW(fused)"]:
    for variant, run_once in torch_sides(class_name, shapes, np_params, np_grads).items():
      sides[f"torch:{class_name}:{variant}"] = run_once
  times = interleave(sides, rounds, skipped)
  rows = [row for row in rows if times.get(row["symbol"]) and times.get("floor:" + row["symbol"])]

  symbols = {row["symbol"] for row in rows}
  table = [_row(row, times, jax_sides[row["symbol"]], shapes, symbols) for row in rows]
  baseline = table[0]
  for entry in table:
    entry["compile_ratio_vs_optax_adamw"] = entry["compile_cpu_s"] / baseline["compile_cpu_s"]
  _print_table(table, n_params, threads, skipped)
  side_names = sorted(sides)
  faulting = {r["optimizer"]: jax_sides[r["optimizer"]] for r in table
              if r["page_faults_per_step"] > PAGE_FAULTING}
  del sides, jax_sides, times  # free the other buffers before compiling the sweep
  sweep = (compile_sweep(rows, LEAF_COUNTS[:1], options, repeats=1) if quick
           else compile_sweep(rows, LEAF_COUNTS, options))
  for entry in table:
    entry.update(_compile_entry(entry["optimizer"], sweep))
  compile_at_matched_kernels(table, rows, sweep, options, repeats=1 if quick else COMPILE_REPEATS,
                             every_documented=quick)
  _print_sweep(sweep)
  _time_without_page_faults(table, faulting, rounds)  # last: it changes the allocator
  del faulting
  wall_time = time.perf_counter() - start_time
  table, baseline = table[1:], table[0]  # the registered optimizers; optax.adamw apart

  verdicts = None if quick else _verdicts(table, sweep)
  fig = _figure([baseline] + table, sweep, n_params)
  return save_result(
      "bench_optimizers", out,
      claim=("Engineering goal (issue 15), not a paper claim: every elementwise optimizer's "
             "compiled step accesses at most 1.5x its ideal bytes (or the passes the report "
             "documents) and runs within 3x of the bandwidth floor measured in the same run; "
             "every optimizer is faster than the pytorch-optimizer implementation of the same "
             "algorithm (at the same precision) and within 5% of optax where optax has it; an "
             "elementwise optimizer's compile time grows linearly with the number of leaves "
             "and at 1,000 leaves stays within 1.5x of optax.adamw's (or of optax.adamw's "
             "at as many compiled kernels, where documented passes need more kernels)."),
      measured=_measured([baseline] + table, sweep, verdicts),
      claim_held=None if verdicts is None else not any(verdicts.values()),
      config={"n_params": n_params, "shapes": shapes, "rounds": rounds, "threads": threads,
              "learning_rate": LEARNING_RATE, "devices": str(jax.devices()),
              "sides": side_names, "leaf_counts": sweep["leaves"],
              "torch_threads": threads},
      metrics={"rows": table, "baseline": baseline, "skipped": skipped, "compile_sweep": sweep,
               "verdicts": verdicts, "extra_passes": EXTRA_PASSES},
      seeds=[0], wall_time_s=wall_time, figure=fig, quick=quick,
  )


def _best_torch(times, class_name, lower_precision: bool = False
                ) -> tuple[str | None, list[float] | None]:
  """The faster variant (lower minimum) of a PyTorch class, and its times; with
  `lower_precision`, of its LOWER_PRECISION variants."""
  variants = {k.rsplit(":", 1)[1]: v for k, v in times.items()
              if k.startswith(f"torch:{class_name}:") and v
              and k.endswith(LOWP) == lower_precision}
  if not variants:
    return None, None
  best = min(variants, key=lambda k: min(variants[k]))
  return best, variants[best]


def _row(row, times, side, shapes, symbols) -> dict:
  symbol = row["symbol"]
  n_params = sum(math.prod(s) for s in shapes.values())
  ours, floor, base = times[symbol], times["floor:" + symbol], times[BASELINE]
  torch_class = row["method"].pytorch_optimizer.get(symbol) if row["method"] else None
  variant, theirs = _best_torch(times, torch_class) if torch_class else (None, None)
  _, fused = _best_torch(times, "torch.AdamW(fused)")
  _, lowp = _best_torch(times, torch_class, lower_precision=True) if torch_class else (None, None)
  counterpart = optax_counterpart(row, symbols)
  step_cost, floor_cost = cost(side.step), cost(side.floor)
  state_bytes = side.state_bytes()
  ideal = (3 * 4 * n_params + 2 * state_bytes) / n_params  # float32 params and gradients
  ms = lambda seconds: 1e3 * seconds
  return {
      "optimizer": symbol,
      "step_ms": ms(min(ours)), "step_ms_median": ms(statistics.median(ours)),
      "optax_adamw_step_ms": ms(min(base)),
      "ratio_vs_optax_adamw": min(ours) / min(base),
      "paired_ratio_vs_optax_adamw": paired_ratio(ours, base),
      "optax_counterpart": counterpart,
      "paired_ratio_vs_optax_counterpart": (paired_ratio(ours, times[counterpart])
                                            if counterpart else None),
      "pytorch_optimizer": torch_class, "torch_variant": variant,
      "torch_step_ms": None if theirs is None else ms(min(theirs)),
      "torch_step_ms_median": None if theirs is None else ms(statistics.median(theirs)),
      "ratio_vs_torch": None if theirs is None else ms(min(ours)) / ms(min(theirs)),
      "paired_ratio_vs_torch": None if theirs is None else paired_ratio(ours, theirs),
      "torch_lower_precision": (LOWER_PRECISION[torch_class][3] if lowp is not None
                                else None),
      "paired_ratio_vs_torch_lower_precision": (None if lowp is None
                                                else paired_ratio(ours, lowp)),
      "torch_fused_adamw_step_ms": None if fused is None else ms(min(fused)),
      "paired_ratio_vs_torch_fused_adamw": None if fused is None else paired_ratio(ours, fused),
      "floor_step_ms": ms(min(floor)), "paired_ratio_vs_floor": paired_ratio(ours, floor),
      "compile_cpu_s": side.compile_cpu_s,
      "xla_bytes_per_param": step_cost["bytes"] / n_params,
      "ideal_bytes_per_param": ideal,
      "bytes_ratio": step_cost["bytes"] / n_params / ideal,
      "floor_xla_bytes_per_param": floor_cost["bytes"] / n_params,
      "xla_flops_per_param": step_cost["flops"] / n_params,
      "state_bytes_per_param": state_bytes / n_params,
      "temp_bytes_per_param": side.temp_bytes() / n_params,
      "page_faults_per_step": statistics.median(side.page_faults[2:] or [0]),
      "rounds_timed": len(ours),
      "extra_passes": EXTRA_PASSES.get(symbol),
      "largest_leaf_passes": leaf_kernels(side.hlo, max(shapes.values(), key=math.prod)),
  }


def compile_at_matched_kernels(table, rows, sweep, options=None, repeats: int = COMPILE_REPEATS,
                               every_documented: bool = False) -> None:
  """Adds to each elementwise entry with documented extra passes whose compile time at the
  largest leaf count is above 1.5x optax.adamw's (with `every_documented`, to each such entry)
  optax.adamw's compile seconds for as many kernels (`matched_baseline_cpu_s`, the minimum of
  `repeats` compiles), and the ratio of the entry's own (`repeated_cpu_s`) to it.

  optax.adamw's kernels grow in proportion to its leaves (three per leaf), so it is compiled on
  the even leaf count that scales its kernel count at the largest count to the entry's.
  """
  makes = {row["symbol"]: row["make"] for row in rows}
  base_kernels = sweep["kernels"][BASELINE]
  base_leaves, base_count = sweep["leaves"][len(base_kernels) - 1], base_kernels[-1]
  for entry in table:
    symbol = entry["optimizer"]
    if (symbol == BASELINE or not entry["extra_passes"] or not _elementwise(entry)
        or entry.get("compile_leaves") != sweep["leaves"][-1]
        or (not every_documented and entry["compile_ratio_at_most_leaves"] <= 1.5)):
      continue
    kernels = entry["compile_kernels_by_leaves"][-1]
    leaves = max(2, 2 * round(kernels * base_leaves / base_count / 2))
    runs = [compile_seconds(makes[BASELINE], leaves, options) for _ in range(repeats)]
    seconds = min(t for t, _, _ in runs)
    entry.update({"matched_baseline_leaves": leaves, "matched_baseline_kernels": runs[0][1],
                  "matched_baseline_cpu_s": seconds,
                  "compile_ratio_at_matched_kernels": sweep["repeated_cpu_s"][symbol] / seconds})
    print(f"compile CPU s at {kernels} kernels: {symbol} {sweep['repeated_cpu_s'][symbol]:.2f}, "
          f"{BASELINE} {seconds:.2f} ({runs[0][1]} kernels, {leaves} leaves)")


def _compile_entry(symbol: str, sweep) -> dict[str, Any]:
  """An optimizer's compile seconds and kernels by leaf count, and at the largest count it
  reached, its ratios to optax.adamw (compiled alternately with it, the minimum of each):
  seconds and kernels."""
  seconds, kernels = sweep["cpu_seconds"].get(symbol), sweep["kernels"].get(symbol)
  entry = {"compile_cpu_s_by_leaves": seconds, "compile_kernels_by_leaves": kernels,
           "compile_distinct_kernels_by_leaves": sweep["distinct_kernels"].get(symbol),
           "compile_growth_exponent": sweep["growth_exponent"].get(symbol)}
  if seconds:
    i = len(seconds) - 1
    ours, base_seconds = sweep["repeated_cpu_s"][symbol], sweep["paired_baseline_cpu_s"][symbol]
    base_kernels = sweep["kernels"][BASELINE][i]
    entry.update({
        "compile_leaves": sweep["leaves"][i],
        "compile_ratio_at_most_leaves": ours / base_seconds,
        "kernel_ratio_at_most_leaves": kernels[i] / base_kernels,
    })
  return entry


def _compiles_close_to_optax(r) -> bool:
  """Within 1.5x of optax.adamw's compile time at the largest leaf count; or, where the step
  needs documented passes beyond one per buffer (each a kernel on XLA:CPU), within 1.5x of
  optax.adamw's time for as many kernels (`compile_at_matched_kernels`)."""
  ratio = r.get("compile_ratio_at_most_leaves")
  if ratio is None or r.get("compile_leaves") != LEAF_COUNTS[-1]:
    return False  # skipped as too slow before the largest count
  matched = r.get("compile_ratio_at_matched_kernels")
  return ratio <= 1.5 or (bool(r["extra_passes"]) and matched is not None and matched <= 1.5)


def _elementwise(entry) -> bool:
  """Elementwise state (at least one float32 per parameter) and a handful of flops per
  parameter. Not a matrix optimizer: its step runs matrix iterations, an SVD or solves per leaf
  (thousands of flops per parameter), or, as Fira's, keeps low-rank state (0.09 bytes per
  parameter here) and projects every gradient through it, 2r flops per element and pass for a
  rank r: its time follows the rank, not the bytes."""
  return entry["state_bytes_per_param"] >= 4 and entry["xla_flops_per_param"] < 100


def _verdicts(table, sweep) -> dict[str, list[str]]:
  """Per goal of the claim, the jaxlearn optimizers that miss it (none: met): all of them for
  the comparisons with pytorch-optimizer and optax, the elementwise ones for bytes, the floor
  and compile time (a matrix optimizer's step runs matrix iterations, an SVD or solves per
  leaf: not a bandwidth-bound pass, nor comparable with Adam's three kernels). The registered
  optax aliases are the references, not under test."""
  ours = [r for r in table if not r["optimizer"].startswith("optax.")]
  growth = sweep["growth_exponent"]
  misses = lambda ok, rows=ours: [r["optimizer"] for r in rows if not ok(r)]
  elementwise = lambda ok: misses(ok, [r for r in ours if _elementwise(r)])
  return {
      "bytes_within_1.5x_or_documented": elementwise(
          lambda r: r["bytes_ratio"] <= 1.5 or r["extra_passes"]),
      "within_3x_of_floor": elementwise(lambda r: r["paired_ratio_vs_floor"] <= 3.0),
      "within_3x_of_floor_once_temporaries_reuse_freed_memory": elementwise(
          lambda r: r.get("paired_ratio_vs_floor_reusing_memory",
                          r["paired_ratio_vs_floor"]) <= 3.0),
      "faster_than_pytorch_optimizer": misses(
          lambda r: r["paired_ratio_vs_torch"] is None or r["paired_ratio_vs_torch"] < 1.0),
      "within_5pct_of_optax_counterpart": misses(
          lambda r: (r["paired_ratio_vs_optax_counterpart"] is None
                     or r["paired_ratio_vs_optax_counterpart"] <= 1.05)),
      "compile_time_linear_in_leaves": elementwise(
          lambda r: growth.get(r["optimizer"], 1.0) <= 1.3),
      "compile_within_1.5x_of_optax_adamw_or_at_as_many_documented_kernels": elementwise(
          _compiles_close_to_optax),
  }


def _short(symbol: str) -> str:
  return symbol.removeprefix("jaxlearn.optim.")


def _measured(table, sweep, verdicts) -> str:
  parts = []
  for r in table:
    torch_part = ("" if r["paired_ratio_vs_torch"] is None
                  else f", {r['paired_ratio_vs_torch']:.2f}x {r['pytorch_optimizer']}")
    if r.get("paired_ratio_vs_torch_lower_precision") is not None:
      torch_part += (f" (in float32; {r['paired_ratio_vs_torch_lower_precision']:.2f}x as it "
                     f"comes, whose {r['torch_lower_precision']})")
    reuse = r.get("paired_ratio_vs_floor_reusing_memory")
    reuse_part = "" if reuse is None else f" ({reuse:.1f}x reusing freed memory)"
    parts.append(f"{_short(r['optimizer'])}: {r['step_ms']:.1f} ms, "
                 f"{r['paired_ratio_vs_floor']:.1f}x floor{reuse_part}, "
                 f"{r['paired_ratio_vs_optax_adamw']:.2f}x adamw{torch_part}, "
                 f"{r['xla_bytes_per_param']:.0f}/{r['ideal_bytes_per_param']:.0f} B/param")
  counts = sweep["leaves"]
  matched = lambda r: ("" if r.get("compile_ratio_at_matched_kernels") is None else
                       f"; {r['compile_ratio_at_matched_kernels']:.1f}x optax.adamw's at as "
                       f"many kernels ({r['matched_baseline_leaves']} leaves)")
  compile_part = ("; compile CPU s vs optax.adamw at the most leaves reached (of "
                  f"{counts[-1]}), as time (kernels): ") + ", ".join(
      f"{_short(r['optimizer'])} {r['compile_ratio_at_most_leaves']:.1f}x "
      f"({r['kernel_ratio_at_most_leaves']:.1f}x{matched(r)})"
      + ("" if r["compile_leaves"] == counts[-1] else f" at {r['compile_leaves']}")
      for r in table if r.get("compile_ratio_at_most_leaves") is not None)
  not_judged = [_short(r["optimizer"]) for r in table
                if not r["optimizer"].startswith("optax.") and not _elementwise(r)]
  if not_judged:
    compile_part += ("; matrix or low-rank steps, held to the comparisons with PyTorch and "
                     "optax only (not to the bytes, floor and compile goals of elementwise "
                     "steps): " + ", ".join(not_judged))
  verdict = "" if verdicts is None else "; " + "; ".join(
      f"{k}: " + ("yes" if not missed else "NO for " + ", ".join(
          _short(m) for m in missed)) for k, missed in verdicts.items())
  return ("Paired medians over interleaved rounds (ratios below 1: we are faster). "
          + "; ".join(parts) + compile_part + verdict)


def _print_table(table, n_params, threads, skipped) -> None:
  print(f"{n_params / 1e6:.2f}M float32 parameters, {threads} threads (XLA and PyTorch); "
        "ms: min over rounds; ratios: paired medians")
  header = (f"{'optimizer':<32}{'ms':>7}{'med':>7}{'/adamw':>8}{'/torch':>8}{'/fused':>8}"
            f"{'/floor':>8}{'B/param':>9}{'ideal':>7}{'ratio':>7}")
  print(header)
  print("-" * len(header))
  fmt = lambda x: "-" if x is None else f"{x:.2f}"
  for r in table:
    print(f"{r['optimizer']:<32}{r['step_ms']:>7.2f}{r['step_ms_median']:>7.2f}"
          f"{fmt(r['paired_ratio_vs_optax_adamw']):>8}{fmt(r['paired_ratio_vs_torch']):>8}"
          f"{fmt(r['paired_ratio_vs_torch_fused_adamw']):>8}{r['paired_ratio_vs_floor']:>8.2f}"
          f"{r['xla_bytes_per_param']:>9.1f}{r['ideal_bytes_per_param']:>7.1f}"
          f"{r['bytes_ratio']:>7.2f}")
  for symbol, reason in skipped.items():
    print(f"skipped {symbol}: {reason}")


def _print_sweep(sweep) -> None:
  print("compile CPU seconds (kernels, distinct kernels) by number of leaves "
        + str(sweep["leaves"]))
  for symbol, values in sweep["cpu_seconds"].items():
    growth = sweep["growth_exponent"].get(symbol)
    grow = "" if growth is None else f"  (grows as leaves^{growth:.2f})"
    print(f"  {symbol:<32}" + " ".join(
        f"{v:7.2f} ({k:5d}, {d:3d})" for v, k, d in zip(
            values, sweep["kernels"][symbol], sweep["distinct_kernels"][symbol])) + grow)


def _figure(table, sweep, n_params):
  fig, axes = new_figure(nrows=3, width=max(6.0, 0.4 * len(table) + 2))
  names = [_short(r["optimizer"]) for r in table]
  x = np.arange(len(table))
  value = lambda r, key: r[key] if r[key] is not None else np.nan
  for offset, key, label in ((-0.3, "paired_ratio_vs_floor", "vs bandwidth floor"),
                             (-0.1, "paired_ratio_vs_optax_adamw", "vs optax.adamw"),
                             (0.1, "paired_ratio_vs_torch", "vs pytorch-optimizer"),
                             (0.3, "paired_ratio_vs_torch_fused_adamw", "vs torch fused AdamW")):
    axes[0, 0].bar(x + offset, [value(r, key) for r in table], 0.2, label=label)
  axes[0, 0].axhline(1.0, color="k", lw=0.8)
  axes[0, 0].set(xticks=x, yscale="log", ylabel="step time ratio (paired median)",
                 title=f"donated step, {n_params / 1e6:.1f}M params, CPU")
  axes[0, 0].set_xticklabels(names, rotation=60, ha="right", fontsize=7)
  axes[0, 0].legend(fontsize=7)
  axes[1, 0].bar(x - 0.2, [r["xla_bytes_per_param"] for r in table], 0.4, label="XLA count")
  axes[1, 0].bar(x + 0.2, [r["ideal_bytes_per_param"] for r in table], 0.4, label="ideal")
  axes[1, 0].set(xticks=x, ylabel="bytes per parameter and step", yscale="log",
                 title="bytes accessed (XLA cost analysis)")
  axes[1, 0].set_xticklabels(names, rotation=60, ha="right", fontsize=7)
  axes[1, 0].legend(fontsize=7)
  counts = sweep["leaves"]
  for symbol, values in sweep["cpu_seconds"].items():
    style = "k-" if symbol == BASELINE else "-"
    axes[2, 0].plot(counts[:len(values)], values, style, marker="o", ms=3,
                    label=_short(symbol))
  axes[2, 0].set(xscale="log", yscale="log", xlabel="leaves ((32, 32) kernels and biases)",
                 ylabel="compile CPU seconds", title="compile time vs leaf count")
  axes[2, 0].legend(fontsize=6, ncol=2)
  fig.tight_layout()
  return fig


def main(argv=None):
  return experiment_main(run, __doc__, argv)


if __name__ == "__main__":
  main()
