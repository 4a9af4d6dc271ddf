"""The one mixture-of-experts feed-forward module, used by encoder and decoder.

router -> top-k -> sort by expert -> grouped matmul -> unpermute -> combine.

Its settings are one `MoeSettings` (read from a config section by
`MoeSettings.from_config`), whose defaults hold for the encoder's and the
decoder's layers alike; the names below (`router=`, ...) are its fields.

Routers (`router=`):
  learned   top-k softmax router (float32) with the Switch/GShard load-balancing
            loss and the ST-MoE router z-loss.
  language  each frame/token goes to the expert of its language (`expert_map`)
            by the LID posterior: hard top-1 by argmax, or
            (`language_soft=True`) the posterior-weighted mixture of the
            experts.
  hybrid    the learned router plus `lid_alignment_loss`, a cross-entropy that
            pulls the router distribution toward the LID posterior mapped to
            experts.

The language -> expert map (`expert_map=`, see `resolve_expert_map`):
  "modulo"  language l -> expert l % num_experts (the default, and the map of
            every model trained before the setting existed).
  "pairs"   the two languages of each code-switch pair of the corpus
            (`grammar.CODE_SWITCH_PAIRS`) on different experts, languages spread
            evenly over the experts; one expert per language when there are
            enough (`pairs_expert_map`).
  a tuple   the expert of each language, in `languages.LANGUAGE_CODES` order
            (in a config also a string of ids, "0,1,2,3,1,2,0").

Experts are gated FFNs by default (`gated=True`): with activation "swish" this
is SwiGLU, `down(swish(x @ w_gate) * (x @ w_up))`, which matches a plain FFN's
quality at 2/3 of the hidden width in the literature and is what current MoE
LMs use; `gated=False` gives a plain `down(act(x @ w_up))` FFN.

Dispatch is dropless and index based (Megablocks style, with static shapes):
valid token-assignments are sorted by expert id (argsort), each expert's group
is padded up to a whole number of row blocks, tokens are gathered into that
layout, and a grouped matmul runs each expert on its own blocks only (a loop
over experts with an inner loop over the expert's blocks; the backward pass is
written by hand, see `_grouped_ffn`). Results are gathered back to assignment
order and combined with the gate weights. The work is that of a dense FFN with
`top_k * d_ff` hidden units plus the padding of the last block of each expert
(about 1/8 extra rows with the default block sizing), and nothing is dropped
unless `capacity_factor` is set. `dense=True` runs the reference einsum over
all experts with the same routing decisions; the tests compare the two. On
XLA:CPU `benchmarks/moe_layer.py` measures the sparse path at about the cost
of the dense FFN with the same active parameters for thousands of tokens.

`grouped_matmul="ragged"` runs the same sorted assignments through
`jax.lax.ragged_dot` instead (no block padding, autodiff backward). Measured
with `benchmarks/moe_layer.py --backward --dtype bfloat16` on an H100: at the
demo's size (1440 tokens, d_model 144, top 2 of 4 experts) the ragged path took
0.58 ms and the blocks 2.12 ms (a dense FFN with the same active parameters:
0.32 to 0.37 ms); at 65536 tokens, d_model 1024, top 2 of 8 experts, the blocks
took 130 ms with 256-row and 57 ms with 1024-row blocks (dense FFN: 29 ms), and
the ragged path did not finish compiling and timing within 40 s. On XLA:CPU,
which computes `ragged_dot` as masked products over all experts, the ragged
path is 3 to 7 times slower than the blocks. In a whole training step of the demo
config (`benchmarks/train_step.py --batch 12 --dtypes bfloat16`, an H200) the ragged
path took 19.4 ms against 47.1 ms for the blocks. So `grouped_matmul="auto"` (the
default) takes "ragged" on GPUs and "blocks" elsewhere (TPUs are not measured yet).

Expert parallelism. The expert weights carry the `expert` logical axis. On a
mesh whose expert axis has more than one device (inside `partitioning.axis_rules`,
as training, evaluation and transcription run), the layer dispatches
expert-parallel (`expert_parallel="auto"`, the default; see `expert_parallel_plan`):
routing runs as above on the whole batch, then under `jax.shard_map` each device
takes its token shard (the batch is split over the expert axis too, see
`partitioning.DEFAULT_RULES`), writes each assignment into a fixed slot of a
[num_experts, capacity] buffer and exchanges it by `jax.lax.all_to_all` over the
expert axis; each device runs only its num_experts / devices experts through the
same grouped matmul as above, and a second all-to-all brings the rows back to
be combined. The weights stay split (each device keeps 1/devices of them, and
their gradients are reduced over the other batch axes only); no weight is gathered.
Without `capacity_factor` the buffers hold a slot per token for each expert
(a token sends an expert at most one assignment), so nothing is dropped and the
outputs and gradients are the single-device layer's, at the cost of moving
num_experts / top_k times the assignments' bytes. With `capacity_factor` each
(token shard, expert) pair has `ceil(capacity_factor * shard_tokens * k / E)`
slots, and the drops are decided on each token shard as the single-device layer
decides them on that shard alone (counted in `dropped_fraction`).
`jax.lax.ragged_all_to_all` would move only the routed rows without drops; XLA:CPU
does not implement it (jax 0.10: "ragged-all-to-all is not supported by XLA:CPU"),
so it is not used. With `expert_parallel="off"`, or where the mesh does not allow
it (one device on the expert axis, experts not divisible by its devices, tokens
not divisible by the token shards), XLA gathers the weights onto every device.

Padding tokens (mask False) are never routed, never counted in loads or losses,
and produce zero output.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from collections.abc import Sequence

import flax
import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from moe_asr.data import languages
from moe_asr.data.synth import grammar
from moe_asr.models import partitioning
from moe_asr.models.layers import ACTIVATIONS

ROUTERS = ("learned", "language", "hybrid")
GROUPED_MATMULS = ("blocks", "ragged")
EXPERT_MAPS = ("modulo", "pairs")
EXPERT_PARALLEL = ("auto", "on", "off")


def resolve_grouped_matmul(name: str, backend: str | None = None) -> str:
  """The grouped matmul `name` stands for: "auto" is "ragged" on GPUs, "blocks" elsewhere."""
  if name == "auto":
    return "ragged" if (backend or jax.default_backend()) == "gpu" else "blocks"
  if name not in GROUPED_MATMULS:
    raise ValueError(f"grouped_matmul must be one of {('auto', *GROUPED_MATMULS)}, got {name!r}")
  return name


_ACTIVATIONS = ACTIVATIONS


@dataclasses.dataclass(frozen=True)
class MoeSettings:
  """The expert and router settings of a `MoeFeedForward`, encoder's and decoder's alike.

  One definition and one set of defaults for every MoE layer; a config section
  (`config.model.encoder`, `config.model.decoder`) holds them under the same names.

  Attributes:
    num_experts: routed experts E (0 = none; a MoE layer needs at least 1).
    router: "learned" | "language" | "hybrid" (module doc).
    top_k: experts per token for the learned and hybrid routers (the language router
      uses 1 when hard, all experts with posterior mass when soft). With top_k > 1 the
      chosen probabilities are renormalised to sum to 1; with top_k = 1 the gate is the
      raw probability (Switch), so the router also learns from the task loss.
    capacity_factor: None = dropless. Otherwise each expert keeps at most
      `ceil(capacity_factor * n_valid * k / E)` assignments (n_valid = valid tokens in
      the batch); first choices of all tokens take priority over second choices, then
      earlier tokens over later ones.
    shared_expert: add an always-on expert FFN of width d_ff.
    language_soft: language router: soft posterior mixture instead of argmax.
    gated: gated (GLU) experts with w_gate, w_up, w_down; else w_up, w_down.
    grouped_matmul: "blocks" (padded row blocks, hand-written backward), "ragged"
      (`jax.lax.ragged_dot`, autodiff backward) or "auto" (ragged on GPUs, blocks
      elsewhere); see the module doc.
    block_size: most rows per block of the "blocks" grouped matmul (fewer for few
      tokens); `moe_block_size` in a config section.
    expert_map: the expert of each language for the language and hybrid routers:
      "modulo", "pairs" or one expert id per language (`resolve_expert_map`).
    expert_parallel: "auto" (expert-parallel dispatch wherever the active mesh allows
      it, see `MoeFeedForward.expert_parallel_plan`), "on" (the same; an error where it
      does not) or "off" (always the single-device path).
  """

  num_experts: int = 0
  router: str = "learned"
  top_k: int = 2
  capacity_factor: float | None = None
  shared_expert: bool = False
  language_soft: bool = False
  gated: bool = True
  grouped_matmul: str = "auto"
  block_size: int = 256
  expert_map: str | tuple[int, ...] = "modulo"
  expert_parallel: str = "auto"

  def __post_init__(self):
    if self.router not in ROUTERS:
      raise ValueError(f"router must be one of {ROUTERS}, got {self.router!r}")
    if not isinstance(self.expert_map, str):  # A list from a config: hashable as a tuple.
      object.__setattr__(self, "expert_map", tuple(self.expert_map))

  @classmethod
  def from_config(cls, cfg: ml_collections.ConfigDict) -> MoeSettings:
    """The settings of a config section (`config.model.encoder`, `config.model.decoder`).

    Reads the fields of the same names; the block size is `moe_block_size` (or
    `block_size`). Missing keys take the defaults above; other keys are ignored.
    """
    get = cfg.get
    kwargs = {f.name: get(f.name) for f in dataclasses.fields(cls) if f.name in cfg}
    if "moe_block_size" in cfg:
      kwargs["block_size"] = get("moe_block_size")
    return cls(**kwargs)


@flax.struct.dataclass
class MoeAux:
  """Auxiliary outputs of one MoE layer (all float32).

  Attributes:
    load_balance_loss: scalar, `E * sum_e f_e * P_e` over valid tokens, where
      `f_e` is the fraction of valid token-assignments routed to expert e and
      `P_e` the mean router probability of e; 1.0 under uniform routing, E when
      collapsed onto one expert. For the language router it is a diagnostic
      (computed without gradient).
    router_z_loss: scalar, mean over valid tokens of `logsumexp(logits)^2`
      (0 for the language router).
    lid_alignment_loss: scalar, hybrid router only: mean cross-entropy
      `-sum_e t_e log p_e` between the LID posterior mapped to experts `t` and
      the router probabilities `p` (0 otherwise).
    expert_load: [num_experts], fraction of valid token-assignments each expert
      received before any capacity drop (sums to 1; for soft language routing,
      the mean posterior mass of each expert).
    dropped_fraction: scalar, fraction of valid token-assignments dropped by
      the capacity factor (0 when dropless).
    token_load: [batch, length, num_experts] routing weight each position gave
      each expert (sums to 1 at valid positions, 0 at padding): the per-position
      view of `expert_load`, for expert-by-language statistics ([1, 1, E] zeros in
      `zeros`, which broadcasts in `mean`).
  """

  load_balance_loss: jax.Array
  router_z_loss: jax.Array
  lid_alignment_loss: jax.Array
  expert_load: jax.Array
  dropped_fraction: jax.Array
  token_load: jax.Array

  @staticmethod
  def zeros(num_experts: int) -> MoeAux:
    """All-zero aux (for models without MoE layers)."""
    z = jnp.zeros((), jnp.float32)
    experts = jnp.zeros((num_experts,), jnp.float32)
    return MoeAux(z, z, z, experts, z, jnp.zeros((1, 1, num_experts), jnp.float32))

  @staticmethod
  def mean(auxes: Sequence[MoeAux]) -> MoeAux:
    """Averages several layers' aux field by field (layers need equal num_experts)."""
    if not auxes:
      raise ValueError("MoeAux.mean needs at least one aux")
    return jax.tree.map(lambda *xs: sum(xs) / len(xs), *auxes)


def _language_names(num_languages: int) -> list[str]:
  codes = languages.LANGUAGE_CODES
  return [codes[i] if i < len(codes) else f"language {i}" for i in range(num_languages)]


def _colour(partners: list[set[int]], num_experts: int, most: int) -> tuple[int, ...] | None:
  """Experts for languages 0, 1, ... in turn, no partners on one expert, at most `most` each.

  Depth-first: each language tries the experts by (languages already there, id), so the
  first map found spreads the languages evenly (with 6 experts and the corpus's pairs it
  is the modulo map). Empty experts are interchangeable, so only the first of them is
  tried. None if no such map exists.
  """
  assigned: list[int] = []
  counts = [0] * num_experts

  def place(lang: int) -> bool:
    if lang == len(partners):
      return True
    taken = {assigned[p] for p in partners[lang] if p < lang}
    tried_empty = False
    for e in sorted(range(num_experts), key=lambda e: (counts[e], e)):
      if e in taken or counts[e] >= most or (counts[e] == 0 and tried_empty):
        continue
      tried_empty |= counts[e] == 0
      assigned.append(e)
      counts[e] += 1
      if place(lang + 1):
        return True
      assigned.pop()
      counts[e] -= 1
    return False

  return tuple(assigned) if place(0) else None


def pairs_expert_map(
  num_languages: int,
  num_experts: int,
  pairs: Sequence[tuple[str, str]] = grammar.CODE_SWITCH_PAIRS,
) -> tuple[int, ...]:
  """An expert per language that keeps the two languages of every code-switch pair apart.

  Languages are `languages.LANGUAGE_CODES[:num_languages]`; pairs naming a language
  outside them are ignored. With num_experts >= num_languages language l gets expert l.
  Otherwise the map puts no pair on one expert whenever the pair graph can be coloured
  with num_experts colours, with the fewest languages on the fullest expert that allows;
  when it cannot (one expert, or e.g. three mutually paired languages on two experts)
  each language in turn takes the expert holding the fewest of its partners. Ties go to
  the emptier, then the lower-numbered expert, so the map is deterministic.

  Args:
    num_languages: languages of the LID posterior.
    num_experts: routed experts (>= 1).
    pairs: (matrix, embedded) language codes; the corpus's by default.

  Returns:
    The expert id of each language.
  """
  if num_experts < 1:
    raise ValueError(f"num_experts={num_experts}; expected >= 1")
  if num_experts >= num_languages:
    return tuple(range(num_languages))
  index = {code: i for i, code in enumerate(languages.LANGUAGE_CODES[:num_languages])}
  partners: list[set[int]] = [set() for _ in range(num_languages)]
  for a, b in pairs:
    if a in index and b in index and a != b:
      partners[index[a]].add(index[b])
      partners[index[b]].add(index[a])
  for most in range(-(-num_languages // num_experts), num_languages + 1):
    found = _colour(partners, num_experts, most)
    if found is not None:
      return found
  assigned: list[int] = []
  counts = [0] * num_experts
  for lang in range(num_languages):
    shared = [sum(assigned[p] == e for p in partners[lang] if p < lang) for e in range(num_experts)]
    e = min(range(num_experts), key=lambda e: (shared[e], counts[e], e))
    assigned.append(e)
    counts[e] += 1
  return tuple(assigned)


def resolve_expert_map(
  spec: str | Sequence[int], num_languages: int, num_experts: int
) -> tuple[int, ...]:
  """The expert of each language for an `expert_map` setting.

  Args:
    spec: "modulo" (language l -> expert l % num_experts), "pairs"
      (`pairs_expert_map`), or the expert id of each language, in
      `languages.LANGUAGE_CODES` order: a sequence of ints or a string of them
      separated by commas or spaces ("0,1,2,3,1,2,0", as a config override can hold).
    num_languages: languages of the LID posterior.
    num_experts: routed experts.

  Returns:
    A tuple of num_languages expert ids in [0, num_experts).

  Raises:
    ValueError: an unknown name, or an explicit map of the wrong length or with an
      expert id outside [0, num_experts).
  """
  if num_experts < 1:
    raise ValueError(f"num_experts={num_experts}; expected >= 1")
  if isinstance(spec, str):
    if spec == "modulo":
      return tuple(lang % num_experts for lang in range(num_languages))
    if spec == "pairs":
      return pairs_expert_map(num_languages, num_experts)
    try:
      ids = [int(t) for t in spec.replace(",", " ").split()]
    except ValueError:
      ids = []
    if not ids:
      raise ValueError(
        f"expert_map must be one of {EXPERT_MAPS} or the expert id of each language, got {spec!r}"
      )
  else:
    ids = list(spec)
  names = _language_names(num_languages)
  if len(ids) != num_languages:
    raise ValueError(
      f"expert_map {tuple(ids)} has {len(ids)} entries; it needs one expert id per language, "
      f"{num_languages} ({', '.join(names)})"
    )
  out = []
  for name, e in zip(names, ids, strict=True):
    if isinstance(e, bool) or not isinstance(e, numbers.Integral) or not 0 <= e < num_experts:
      raise ValueError(
        f"expert_map {tuple(ids)} sends {name} to expert {e!r}; expert ids are integers in "
        f"[0, num_experts={num_experts})"
      )
    out.append(int(e))
  return tuple(out)


def language_to_expert(
  num_languages: int, num_experts: int, expert_map: Sequence[int] | None = None
) -> jax.Array:
  """[num_languages, num_experts] 0/1 matrix: language l -> expert expert_map[l] (l % E)."""
  if expert_map is None:
    expert_map = resolve_expert_map("modulo", num_languages, num_experts)
  return jax.nn.one_hot(jnp.asarray(expert_map, jnp.int32), num_experts, dtype=jnp.float32)


def _expert_init(in_axis: int) -> nnx.Initializer:
  # LeCun-normal per expert: fan-in is the contraction axis, not the expert axis.
  return nnx.initializers.variance_scaling(
    1.0, "fan_in", "truncated_normal", in_axis=in_axis, out_axis=-1, batch_axis=(0,)
  )


def _matmul(a: jax.Array, b: jax.Array, dtype) -> jax.Array:
  """a @ b in the compute dtype, accumulated and returned in float32."""
  prec = jnp.float32 if dtype != jnp.float32 else None
  return jnp.matmul(a.astype(dtype), b.astype(dtype), preferred_element_type=prec).astype(
    jnp.float32
  )


def _varying(x) -> set:
  mat = getattr(jax.typeof(x), "mat", None)  # The manual axes' types (jax >= 0.10).
  return set(getattr(mat, "varying", ()) or ())


def _varying_like(tree, *refs):
  """`tree` varying over the manual mesh axes any of `refs` varies over.

  Inside `jax.shard_map` a loop's carry must vary over the axes its updates vary over; zeros
  made there vary over none. Outside shard_map (and with no such axes) `tree` is returned.
  """
  axes = set()
  for ref in jax.tree.leaves(refs):
    axes |= _varying(ref)
  if not axes:
    return tree

  def cast(leaf):
    missing = tuple(sorted(axes - _varying(leaf)))
    return jax.lax.pcast(leaf, missing, to="varying") if missing else leaf

  return jax.tree.map(cast, tree)


def _hidden(pre: tuple[jax.Array, ...], activation: str) -> jax.Array:
  """Hidden units from the input projections: act(gate) * up, or act(up)."""
  act = _ACTIVATIONS[activation]
  return act(pre[0]) * pre[1] if len(pre) == 2 else act(pre[0])


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _grouped_ffn(x_rows, weights, group_blocks, block_rows, activation, dtype):
  """Expert FFN over expert-sorted rows, group by group (a grouped matmul).

  Expert e owns `group_blocks[e]` consecutive blocks of `block_rows` rows,
  starting after the blocks of experts < e; rows past the last group are left
  zero. A loop over experts slices each expert's weights once and an inner
  loop with a data-dependent trip count runs its blocks, so no padding block
  is computed and no weights are copied per block.

  Args:
    x_rows: [rows, d_model] expert-sorted, group-padded rows.
    weights: ([w_gate,] w_up, w_down) stacked over experts, w_down last.
    group_blocks: [experts] int32 blocks per expert.
    block_rows: rows per block (static).
    activation: activation name.
    dtype: compute dtype.

  Returns:
    [rows, d_model] float32.
  """
  return _grouped_forward(x_rows, weights, group_blocks, block_rows, activation, dtype, False)[0]


@jax.named_scope("moe_grouped_matmul")
def _grouped_forward(x_rows, weights, group_blocks, block_rows, activation, dtype, keep_pre):
  """The forward loops; keeps the pre-activations only when a backward pass needs them."""
  rows, d = x_rows.shape
  n_pre = len(weights) - 1 if keep_pre else 0
  d_ff = weights[0].shape[-1]
  starts = jnp.cumsum(group_blocks) - group_blocks

  def expert(e, carry):
    *w_in, w_down = (w[e] for w in weights)

    def block(j, carry):
      y, pre = carry
      r = (starts[e] + j) * block_rows
      xb = jax.lax.dynamic_slice_in_dim(x_rows, r, block_rows)
      pre_b = tuple(_matmul(xb, w, dtype) for w in w_in)  # each [block_rows, d_ff]
      yb = _matmul(_hidden(pre_b, activation), w_down, dtype)
      y = jax.lax.dynamic_update_slice_in_dim(y, yb, r, 0)
      pre = tuple(
        jax.lax.dynamic_update_slice_in_dim(p, pb, r, 0)
        for p, pb in zip(pre, pre_b[:n_pre], strict=True)
      )
      return y, pre

    return jax.lax.fori_loop(0, group_blocks[e], block, carry)

  init = (
    jnp.zeros((rows, d), jnp.float32),
    tuple(jnp.zeros((rows, d_ff), jnp.float32) for _ in range(n_pre)),
  )
  init = _varying_like(init, x_rows, weights, group_blocks)
  return jax.lax.fori_loop(0, len(group_blocks), expert, init)


def _grouped_ffn_fwd(x_rows, weights, group_blocks, block_rows, activation, dtype):
  y, pre = _grouped_forward(x_rows, weights, group_blocks, block_rows, activation, dtype, True)
  return y, (x_rows, weights, group_blocks, pre)


@jax.named_scope("moe_grouped_matmul")
def _grouped_ffn_bwd(block_rows, activation, dtype, residuals, dy):
  # Hand-written: each block adds its weight gradient into its expert's slice
  # of an in-place carry (autodiff would add a full [experts, ...] gradient per
  # block). A scan over blocks (padding blocks skipped by a cond) measured
  # faster here than nested loops over experts and blocks.
  x_rows, weights, group_blocks, pre = residuals
  *w_in, w_down = weights
  rows, d = x_rows.shape
  num_blocks = rows // block_rows
  block_expert = jnp.minimum(
    jnp.searchsorted(jnp.cumsum(group_blocks), jnp.arange(num_blocks), side="right"),
    len(group_blocks) - 1,
  )
  used_blocks = group_blocks.sum()

  def blocks(t):  # [rows, n] -> [blocks, block_rows, n]
    return t.reshape(num_blocks, block_rows, t.shape[-1])

  def blocks_t(t):  # [rows, n] -> [blocks, n, block_rows]
    return blocks(t).transpose(0, 2, 1)

  def block(grads, inputs):
    e, i, x_tb, dyb, dy_tb, *pre_b = inputs

    def compute():
      h, hidden_vjp = jax.vjp(lambda *p: _hidden(p, activation), *pre_b)
      dpre = hidden_vjp(_matmul(dyb, w_down[e].T, dtype))
      dxb = sum(_matmul(dp, w[e].T, dtype) for dp, w in zip(dpre, w_in, strict=True))
      # XLA:CPU runs a matmul with a transposed operand ~35% slower per block,
      # so x^T and dy^T come pre-transposed: dW_in = x^T dpre, dW_down^T = dy^T h.
      updates = tuple(_matmul(x_tb, dp, dtype) for dp in dpre) + (_matmul(dy_tb, h, dtype),)
      return dxb, updates

    def skip():
      zeros = (
        jnp.zeros((block_rows, d), jnp.float32),
        tuple(jnp.zeros(g.shape[1:], g.dtype) for g in grads),
      )
      return _varying_like(zeros, residuals, dy)

    dxb, updates = jax.lax.cond(i < used_blocks, compute, skip)
    grads = tuple(g.at[e].add(u.astype(g.dtype)) for g, u in zip(grads, updates, strict=True))
    return grads, dxb.astype(x_rows.dtype)

  # w_down's gradient accumulates transposed, [experts, d_model, d_ff].
  zeros = tuple(jnp.zeros(w.shape, w.dtype) for w in w_in) + (
    jnp.zeros(w_down.shape, w_down.dtype).transpose(0, 2, 1),
  )
  zeros = _varying_like(zeros, residuals, dy)
  xs = (block_expert, jnp.arange(num_blocks), blocks_t(x_rows), blocks(dy), blocks_t(dy))
  grads, dx = jax.lax.scan(block, zeros, (*xs, *(blocks(p) for p in pre)))
  d_weights = (*grads[:-1], grads[-1].transpose(0, 2, 1))
  return dx.reshape(rows, d), d_weights, None


_grouped_ffn.defvjp(_grouped_ffn_fwd, _grouped_ffn_bwd)


def _combine(y_assign: jax.Array, gates: jax.Array, assigned: jax.Array) -> jax.Array:
  """[n, d] `sum_k gates * y` from choice-major assignment outputs y [k * n, d]."""
  n, k = gates.shape
  weights = jnp.where(assigned, gates, 0.0).T.reshape(n * k, 1)
  # A sum over k slices: XLA:CPU is ~50x slower on reshape(k, n, d).sum(0).
  return sum(y_assign[j * n : (j + 1) * n] * weights[j * n : (j + 1) * n] for j in range(k))


@dataclasses.dataclass(frozen=True)
class ExpertParallelPlan:
  """The static layout of one expert-parallel dispatch (`expert_parallel_plan`).

  Attributes:
    mesh: the device mesh.
    expert_axes: mesh axes the experts are split over.
    token_axes: mesh axes the tokens are split over (each device dispatches its shard).
    expert_size: devices along expert_axes (num_experts / expert_size experts each).
    groups: token shards (devices along token_axes); capacity applies per shard.
    capacity: slots per (token shard, expert) in the exchange buffers: the shard's
      tokens when dropless (no token sends two assignments to one expert), else
      `ceil(capacity_factor * tokens_per_shard * k / num_experts)`.
  """

  mesh: jax.sharding.Mesh
  expert_axes: tuple[str, ...]
  token_axes: tuple[str, ...]
  expert_size: int
  groups: int
  capacity: int


class MoeFeedForward(nnx.Module):
  """Routed-expert feed-forward block: `y, aux = moe(x, mask, lang_probs=...)`."""

  def __init__(
    self,
    d_model: int,
    d_ff: int,
    moe: MoeSettings,
    *,
    num_languages: int = len(languages.LANGUAGE_CODES),
    activation: str = "swish",
    dropout: float = 0.0,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
  ):
    """Builds the block.

    Args:
      d_model: model width.
      d_ff: hidden width of each expert (and of the shared expert).
      moe: the expert and router settings (`MoeSettings`); `expert_map` is kept as the
        static tuple `self.expert_map`.
      num_languages: languages of the LID posterior.
      activation: "swish" (SwiGLU when gated) | "gelu" | "relu".
      dropout: dropout rate on the block output.
      dtype: compute dtype of the expert matmuls (float32 accumulation).
      param_dtype: parameter dtype.
      rngs: random streams.
    """
    num_experts, router, top_k, gated = moe.num_experts, moe.router, moe.top_k, moe.gated
    if activation not in _ACTIVATIONS:
      raise ValueError(f"activation must be one of {tuple(_ACTIVATIONS)}, got {activation!r}")
    grouped_matmul = resolve_grouped_matmul(moe.grouped_matmul)
    if moe.expert_parallel not in EXPERT_PARALLEL:
      raise ValueError(
        f"expert_parallel must be one of {EXPERT_PARALLEL}, got {moe.expert_parallel!r}"
      )
    if router != "language" and not 1 <= top_k <= num_experts:
      raise ValueError(f"top_k={top_k} must be in [1, num_experts={num_experts}]")
    self.d_model = d_model
    self.d_ff = d_ff
    self.num_experts = num_experts
    self.router = router
    self.top_k = top_k
    self.num_languages = num_languages
    self.capacity_factor = moe.capacity_factor
    self.activation = activation
    self.gated = gated
    self.language_soft = moe.language_soft
    self.block_size = moe.block_size
    self.grouped_matmul = grouped_matmul
    self.expert_map = resolve_expert_map(moe.expert_map, num_languages, num_experts)
    self.expert_parallel = moe.expert_parallel
    self.dtype = dtype

    if router != "language":
      # Small init keeps early routing near uniform (Switch Transformer, scale 0.1).
      router_init = nnx.initializers.variance_scaling(0.1, "fan_in", "truncated_normal")
      self.w_router = partitioning.param(
        rngs, router_init, (d_model, num_experts), ("embed", None), param_dtype
      )
    e_in, e_out = (num_experts, d_model, d_ff), (num_experts, d_ff, d_model)
    if gated:
      self.w_gate = partitioning.param(
        rngs, _expert_init(-2), e_in, ("expert", "embed", "mlp"), param_dtype
      )
    self.w_up = partitioning.param(
      rngs, _expert_init(-2), e_in, ("expert", "embed", "mlp"), param_dtype
    )
    self.w_down = partitioning.param(
      rngs, _expert_init(-2), e_out, ("expert", "mlp", "embed"), param_dtype
    )
    self.shared_expert = moe.shared_expert
    if moe.shared_expert:
      init = nnx.initializers.lecun_normal()
      if gated:
        self.shared_w_gate = partitioning.param(
          rngs, init, (d_model, d_ff), ("embed", "mlp"), param_dtype
        )
      self.shared_w_up = partitioning.param(
        rngs, init, (d_model, d_ff), ("embed", "mlp"), param_dtype
      )
      self.shared_w_down = partitioning.param(
        rngs, init, (d_ff, d_model), ("mlp", "embed"), param_dtype
      )
    self.dropout = nnx.Dropout(dropout, rngs=rngs)

  @classmethod
  def from_config(
    cls,
    cfg: ml_collections.ConfigDict,
    *,
    d_model: int,
    d_ff: int,
    rngs: nnx.Rngs,
    dtype=jnp.float32,
  ) -> MoeFeedForward:
    """Builds the block from a config section.

    Fields of `cfg` (all optional): the `MoeSettings` fields (`MoeSettings.from_config`),
    num_languages, activation, dropout — as in `__init__`.
    """
    return cls(
      d_model,
      d_ff,
      MoeSettings.from_config(cfg),
      num_languages=cfg.get("num_languages", len(languages.LANGUAGE_CODES)),
      activation=cfg.get("activation", "swish"),
      dropout=cfg.get("dropout", 0.0),
      dtype=dtype,
      rngs=rngs,
    )

  def param_counts(self) -> tuple[int, int]:
    """(total, active per token) parameter counts of the block.

    Active counts the router, the shared expert and the experts one token
    runs: top_k (learned, hybrid), 1 (hard language routing) or up to the
    experts `expert_map` uses (soft language routing).
    """
    sizes = {name: int(v[...].size) for name, v in vars(self).items() if isinstance(v, nnx.Param)}
    per_expert = sum(sizes[n] for n in ("w_gate", "w_up", "w_down") if n in sizes)
    per_expert //= self.num_experts
    if self.router != "language":
      k = self.top_k
    else:
      k = len(set(self.expert_map)) if self.language_soft else 1
    total = sum(sizes.values())
    return total, total - (self.num_experts - k) * per_expert

  # --- routing -------------------------------------------------------------

  @jax.named_scope("moe_router")
  def _route(self, x, valid, lang_probs, groups: int = 1):
    """Routing decisions shared by the sparse and dense paths.

    Args:
      x: [n, d_model] tokens.
      valid: [n] bool.
      lang_probs: [n, num_languages] or None.
      groups: the capacity factor applies to each of this many consecutive, equal token
        groups on its own (the token shards of expert-parallel dispatch), as it would to
        each group alone; 1 on one device.

    Returns:
      expert_idx [n, k] int32, gates [n, k] float32, assigned [n, k] bool
      (valid and not dropped), MoeAux.
    """
    e = self.num_experts
    validf = valid.astype(jnp.float32)
    n_valid = jnp.maximum(validf.sum(), 1.0)
    zero = jnp.zeros((), jnp.float32)
    z_loss = lid_loss = zero

    lid_target = None
    if self.router in ("language", "hybrid"):
      if lang_probs is None:
        raise ValueError(f"router={self.router!r} needs lang_probs")
      mapping = language_to_expert(self.num_languages, e, self.expert_map)
      lid_target = lang_probs.astype(jnp.float32) @ mapping  # [n, E]

    if self.router == "language":
      probs = jax.lax.stop_gradient(lid_target)
      if self.language_soft:
        k = len(set(self.expert_map))
        gates, expert_idx = jax.lax.top_k(lid_target, k)
        # Experts without posterior mass are not dispatched at all.
        routed = valid[:, None] & (gates > 0)
      else:
        experts = jnp.asarray(self.expert_map, jnp.int32)
        expert_idx = experts[jnp.argmax(lang_probs, axis=-1)][:, None]
        gates = jnp.ones(expert_idx.shape, jnp.float32)
        routed = valid[:, None]
    else:
      logits = x.astype(jnp.float32) @ self.w_router[...].astype(jnp.float32)  # [n, E]
      probs = jax.nn.softmax(logits, axis=-1)
      top_p, expert_idx = jax.lax.top_k(probs, self.top_k)
      gates = top_p / top_p.sum(-1, keepdims=True) if self.top_k > 1 else top_p
      routed = jnp.broadcast_to(valid[:, None], expert_idx.shape)
      z_loss = (jax.nn.logsumexp(logits, axis=-1) ** 2 * validf).sum() / n_valid
      if self.router == "hybrid":
        ce = -(jax.lax.stop_gradient(lid_target) * jax.nn.log_softmax(logits, -1)).sum(-1)
        lid_loss = (ce * validf).sum() / n_valid

    onehot = jax.nn.one_hot(expert_idx, e, dtype=jnp.float32) * routed[..., None]  # [n, k, E]
    if self.router == "language" and self.language_soft:
      token_load = (onehot * gates[..., None]).sum(1)  # [n, E]
      load = token_load.sum(0) / n_valid
    else:
      load = onehot.sum((0, 1)) / jnp.maximum(onehot.sum(), 1.0)
      token_load = onehot.sum(1) / expert_idx.shape[1]
    mean_probs = (probs * validf[:, None]).sum(0) / n_valid
    lb_loss = e * (load * mean_probs).sum()

    assigned = routed
    dropped = zero
    if self.capacity_factor is not None and groups > 1:
      k = expert_idx.shape[1]
      n_group = validf.reshape(groups, -1).sum(1)  # [G]
      capacity = jnp.ceil(self.capacity_factor * jnp.maximum(n_group, 1.0) * k / e)
      # Within each group as below: choice rank first, then token order.
      oh = onehot.reshape(groups, -1, k, e).transpose(0, 2, 1, 3).reshape(groups, -1, e)
      position = ((jnp.cumsum(oh, axis=1) - 1.0) * oh).sum(-1)  # [G, k * n / G]
      position = position.reshape(groups, k, -1).transpose(0, 2, 1).reshape(-1, k)
      keep = jnp.repeat(capacity, x.shape[0] // groups)[:, None] > position
      assigned = routed & keep
      n_routed = routed.sum()
      dropped = (n_routed - assigned.sum()) / jnp.maximum(n_routed, 1)
      dropped = dropped.astype(jnp.float32)
    elif self.capacity_factor is not None:
      k = expert_idx.shape[1]
      capacity = jnp.ceil(self.capacity_factor * n_valid * k / e)
      # Priority: choice rank first (all first choices), then token order.
      oh = onehot.transpose(1, 0, 2).reshape(-1, e)  # [k*n, E]
      position = ((jnp.cumsum(oh, axis=0) - 1.0) * oh).sum(-1)
      keep = capacity > position.reshape(k, -1).T
      assigned = routed & keep
      n_routed = routed.sum()
      dropped = (n_routed - assigned.sum()) / jnp.maximum(n_routed, 1)
      dropped = dropped.astype(jnp.float32)

    aux = MoeAux(
      load_balance_loss=lb_loss,
      router_z_loss=z_loss,
      lid_alignment_loss=lid_loss,
      expert_load=load,
      dropped_fraction=dropped,
      token_load=token_load,
    )
    return expert_idx.astype(jnp.int32), gates, assigned, aux

  # --- experts -------------------------------------------------------------

  def _ffn(self, x, w_gate, w_up, w_down):
    """One expert (or the shared one): [..., d_model] -> [..., d_model] float32."""
    w_in = (w_up,) if w_gate is None else (w_gate, w_up)
    pre = tuple(_matmul(x, w, self.dtype) for w in w_in)
    return _matmul(_hidden(pre, self.activation), w_down, self.dtype)

  def _expert_weights(self):
    return (
      self.w_gate[...] if self.gated else None,
      self.w_up[...],
      self.w_down[...],
    )

  def _dense_experts(self, x, combine):
    """Reference path: every expert on every token. x [n, d]; combine [n, E]."""
    w_gate, w_up, w_down = self._expert_weights()
    act = _ACTIVATIONS[self.activation]
    prec = jnp.float32 if self.dtype != jnp.float32 else None
    xd = x.astype(self.dtype)
    # Expert-major layouts: XLA:CPU has no bf16 x bf16 -> f32 kernel for some
    # batch-in-the-middle dot layouts.
    up = jnp.einsum("nd,edf->enf", xd, w_up.astype(self.dtype), preferred_element_type=prec)
    if self.gated:
      gate = jnp.einsum("nd,edf->enf", xd, w_gate.astype(self.dtype), preferred_element_type=prec)
      h = act(gate) * up
    else:
      h = act(up)
    y = jnp.einsum(
      "enf,efd->end", h.astype(self.dtype), w_down.astype(self.dtype), preferred_element_type=prec
    )  # [E, n, d_model]
    return jnp.einsum("ne,end->nd", combine, y.astype(jnp.float32))

  @jax.named_scope("moe_dispatch")
  def _sparse_experts(self, x, expert_idx, gates, assigned):
    """Dropless grouped matmul over expert-sorted assignments (one device's view).

    Args:
      x: [n, d] tokens.
      expert_idx: [n, k] int32.
      gates: [n, k] float32.
      assigned: [n, k] bool, assignments to compute.

    Returns:
      [n, d] float32, `sum_k gates * expert_k(x)` over assigned pairs.
    """
    n, d = x.shape
    k = expert_idx.shape[1]
    e = self.num_experts
    # Choice-major flattening: assignment i = j * n + token.
    key = jnp.where(assigned, expert_idx, e).T.reshape(n * k)  # [a], e = not dispatched
    token = jnp.tile(jnp.arange(n, dtype=jnp.int32), k)
    # Row n: the zero row that padding and undispatched assignments read.
    x_pad = jnp.concatenate([x.astype(self.dtype), jnp.zeros((1, d), self.dtype)])
    y_assign = self._expert_rows(x_pad, token, key, self._expert_weights())
    return _combine(y_assign, gates, assigned)

  def _expert_rows(self, x_pad, source, key, expert_weights):
    """Each assignment's expert output through the grouped matmul.

    "blocks" pads each expert's group to whole row blocks; "ragged" keeps the
    sorted buffer unpadded, with the undispatched assignments last, reading the
    zero row and counted in the last group (a zero row gives a zero expert
    output: every activation maps 0 to 0, and the experts have no biases).

    Args:
      x_pad: [m + 1, d] rows in the compute dtype, the last one zero.
      source: [a] int32, the row of `x_pad` each assignment reads.
      key: [a] int32, its expert in [0, e); e = not dispatched.
      expert_weights: (w_gate or None, w_up, w_down) of the e experts.

    Returns:
      [a, d] float32 (zero for undispatched assignments).
    """
    a = key.shape[0]
    m = x_pad.shape[0] - 1
    e = expert_weights[1].shape[0]
    order = jnp.argsort(key, stable=True)
    sorted_key = key[order]
    counts = jnp.zeros((e + 1,), jnp.int32).at[key].add(1)

    if self.grouped_matmul == "ragged":
      row_token = jnp.where(sorted_key < e, source[order], m)
      group_sizes = counts[:e].at[e - 1].add(counts[e])
      y_rows = self._ragged_ffn(x_pad[row_token], group_sizes, expert_weights)  # [a, d]
      dest_sorted = jnp.arange(a, dtype=jnp.int32)
    else:
      counts = counts[:e]
      # Block rows: a multiple of 8, at most block_size, and small enough next to
      # the assignments per expert that padding each group to whole blocks (on
      # average bk/2 rows per expert) costs little: bk <= a / (4 E).
      bk = max(8, min(self.block_size, a // (4 * e)) // 8 * 8)
      # sum_e ceil(c_e / bk) <= (a + e * (bk - 1)) // bk bounds the blocks needed.
      rows = (a + e * (bk - 1)) // bk * bk
      padded = -(-counts // bk) * bk
      group_start = jnp.cumsum(counts) - counts
      padded_start = jnp.cumsum(padded) - padded
      safe_key = jnp.minimum(sorted_key, e - 1)
      rank = jnp.arange(a, dtype=jnp.int32) - group_start[safe_key]
      dest_sorted = jnp.where(sorted_key < e, padded_start[safe_key] + rank, rows)  # [a]
      # Buffer row -> source row.
      row_token = jnp.full((rows,), m, jnp.int32).at[dest_sorted].set(source[order], mode="drop")
      weights = tuple(w for w in expert_weights if w is not None)
      y_rows = _grouped_ffn(
        x_pad[row_token], weights, padded // bk, bk, self.activation, self.dtype
      )

    # Unpermute: each assignment reads its row back (undispatched ones read 0).
    dest = jnp.zeros((a,), jnp.int32).at[order].set(dest_sorted)
    return jnp.take(y_rows, dest, axis=0, mode="fill", fill_value=0)  # [a, d]

  @jax.named_scope("moe_grouped_matmul")
  def _ragged_ffn(self, x_rows, group_sizes, expert_weights):
    """The experts on expert-sorted rows through `jax.lax.ragged_dot`: [rows, d] float32."""
    w_gate, w_up, w_down = expert_weights
    prec = jnp.float32 if self.dtype != jnp.float32 else None

    def grouped(lhs, w):
      return jax.lax.ragged_dot(
        lhs.astype(self.dtype), w.astype(self.dtype), group_sizes, preferred_element_type=prec
      ).astype(jnp.float32)

    pre = tuple(grouped(x_rows, w) for w in (w_gate, w_up) if w is not None)
    return grouped(_hidden(pre, self.activation), w_down)

  # --- expert parallelism ----------------------------------------------------

  def expert_parallel_plan(self, num_tokens: int) -> ExpertParallelPlan | None:
    """How `num_tokens` tokens would be dispatched expert-parallel here, or None.

    Expert-parallel when `expert_parallel` is not "off", an `axis_rules` block with a
    mesh is active, the mesh axes of the `expert` logical axis number more than one
    device, they divide num_experts, and the tokens split evenly over the token shards
    (the batch axes, plus the expert axes when the batch is not split over them).
    Otherwise the single-device path runs (XLA gathers the expert weights).
    """
    if self.expert_parallel == "off":
      return None
    mesh = partitioning.active_mesh()
    expert_axes = partitioning.mesh_axes("expert")
    if mesh is None or not expert_axes:
      return self._no_plan("no mesh with an expert axis is active")
    size = functools.reduce(lambda p, a: p * mesh.shape[a], expert_axes, 1)
    batch_axes = partitioning.mesh_axes("batch")
    token_axes = batch_axes + tuple(a for a in expert_axes if a not in batch_axes)
    groups = functools.reduce(lambda p, a: p * mesh.shape[a], token_axes, 1)
    if size == 1:
      return self._no_plan("the expert axes have one device")
    if self.num_experts % size:
      return self._no_plan(f"{self.num_experts} experts do not split over {size} devices")
    if num_tokens % groups:
      return self._no_plan(f"{num_tokens} tokens do not split into {groups} token shards")
    if any(a in batch_axes for a in expert_axes) and not set(expert_axes) <= set(batch_axes):
      return self._no_plan("the batch is split over some expert axes, not all")
    n_group = num_tokens // groups
    if self.capacity_factor is None:
      capacity = n_group  # A token sends at most one assignment to an expert: dropless.
    else:
      k = self.top_k if self.router != "language" else 1
      if self.router == "language" and self.language_soft:
        k = len(set(self.expert_map))
      capacity = math.ceil(self.capacity_factor * n_group * k / self.num_experts)
      capacity = min(n_group, max(1, capacity))
    return ExpertParallelPlan(mesh, expert_axes, token_axes, size, groups, capacity)

  def _no_plan(self, why: str) -> None:
    if self.expert_parallel == "on":
      raise ValueError(f"expert_parallel='on' but {why}")
    return None

  @jax.named_scope("moe_dispatch")
  def _expert_parallel(self, plan, x, expert_idx, gates, assigned):
    """The experts' output with each device running only its own experts.

    Under `jax.shard_map` each device takes its token shard, writes each assignment
    into a fixed slot of a [num_experts, capacity] buffer, exchanges the buffer by
    all-to-all over the expert axes (each device receives, from every device, the rows
    of its own experts and their counts), runs its experts through the grouped matmul,
    and sends the rows back by a second all-to-all. The routing (and with it every
    drop) was decided before, per token shard (`_route(groups=...)`), so no slot
    overflows.

    Args:
      plan: `expert_parallel_plan(n)`.
      x, expert_idx, gates, assigned: as `_sparse_experts`.

    Returns:
      [n, d] float32.
    """
    e, c, p = self.num_experts, plan.capacity, plan.expert_size
    e_local = e // p
    tokens = jax.sharding.PartitionSpec(plan.token_axes)
    experts = jax.sharding.PartitionSpec(plan.expert_axes)
    axis = plan.expert_axes if len(plan.expert_axes) > 1 else plan.expert_axes[0]
    w_gate, w_up, w_down = self._expert_weights()
    weights = (w_up, w_down) if w_gate is None else (w_gate, w_up, w_down)

    def local(x, expert_idx, gates, assigned, *weights):
      n, d = x.shape
      k = expert_idx.shape[1]
      a = n * k
      key = jnp.where(assigned, expert_idx, e).T.reshape(a)  # Choice-major, e = not sent.
      token = jnp.tile(jnp.arange(n, dtype=jnp.int32), k)
      order = jnp.argsort(key, stable=True)
      sorted_key = key[order]
      counts = jnp.zeros((e + 1,), jnp.int32).at[key].add(1)[:e]
      group_start = jnp.cumsum(counts) - counts
      safe_key = jnp.minimum(sorted_key, e - 1)
      rank_sorted = jnp.arange(a, dtype=jnp.int32) - group_start[safe_key]
      rank = jnp.zeros((a,), jnp.int32).at[order].set(rank_sorted)
      # Slot of each assignment in the [e * c] send buffer; e * c = not sent.
      slot = jnp.where((key < e) & (rank < c), key * c + rank, e * c)
      slot_token = jnp.full((e * c,), n, jnp.int32).at[slot].set(token, mode="drop")
      x_pad = jnp.concatenate([x.astype(self.dtype), jnp.zeros((1, d), self.dtype)])
      send = x_pad[slot_token]  # [e * c, d]: chunk j holds the rows for device j's experts.
      recv = jax.lax.all_to_all(send, axis, 0, 0, tiled=True)  # [p * e_local * c, d]
      recv_counts = jax.lax.all_to_all(jnp.minimum(counts, c), axis, 0, 0, tiled=True)
      # Received row r: from device r // (e_local c), for local expert (r // c) % e_local.
      r = jnp.arange(e * c, dtype=jnp.int32)
      local_expert = (r // c) % e_local
      filled = (r % c) < recv_counts[r // c]
      rows_pad = jnp.concatenate([recv, jnp.zeros((1, d), recv.dtype)])
      # Varying like the tokens: the weight gradient's sum over token shards is then the
      # transpose of this cast (a psum), outside the grouped matmul's hand-written backward.
      w = _varying_like(tuple(weights), x)
      local_weights = (None, *w) if len(w) == 2 else w
      recv_key = jnp.where(filled, local_expert, e_local)
      y_recv = self._expert_rows(rows_pad, r, recv_key, local_weights)
      back = jax.lax.all_to_all(y_recv.astype(self.dtype), axis, 0, 0, tiled=True)  # [e * c, d]
      y_assign = jnp.take(back, slot, axis=0, mode="fill", fill_value=0).astype(jnp.float32)
      return _combine(y_assign, gates, assigned)

    fn = jax.shard_map(
      local,
      mesh=plan.mesh,
      in_specs=(tokens, tokens, tokens, tokens, *(experts,) * len(weights)),
      out_specs=tokens,
    )
    return fn(x, expert_idx, gates, assigned, *weights)

  # --- forward -------------------------------------------------------------

  @jax.named_scope("moe")
  def __call__(
    self,
    x: jax.Array,
    mask: jax.Array,
    *,
    lang_probs: jax.Array | None = None,
    dense: bool = False,
  ) -> tuple[jax.Array, MoeAux]:
    """Routes each valid position to its experts and combines their outputs.

    Args:
      x: [batch, length, d_model].
      mask: [batch, length] bool, True = valid.
      lang_probs: [batch, length, num_languages] LID posteriors (required by
        the language and hybrid routers).
      dense: run the reference einsum path over all experts.

    Returns:
      y [batch, length, d_model] in `dtype` (zeros at masked positions), MoeAux.
    """
    x = partitioning.constrain(x, ("batch", "length", "embed"))
    b, t, d = x.shape
    xf = x.reshape(b * t, d)  # [tokens, d_model]
    valid = mask.reshape(b * t)
    lp = None if lang_probs is None else lang_probs.reshape(b * t, -1)
    plan = None if dense else self.expert_parallel_plan(b * t)
    groups = 1 if plan is None else plan.groups
    expert_idx, gates, assigned, aux = self._route(xf, valid, lp, groups)
    aux = aux.replace(token_load=aux.token_load.reshape(b, t, self.num_experts))

    if dense:
      combine = (
        jax.nn.one_hot(expert_idx, self.num_experts, dtype=jnp.float32)
        * jnp.where(assigned, gates, 0.0)[..., None]
      ).sum(1)  # [tokens, E]
      y = self._dense_experts(xf, combine)
    elif plan is not None:
      y = self._expert_parallel(plan, xf, expert_idx, gates, assigned)
    else:
      y = self._sparse_experts(xf, expert_idx, gates, assigned)
    if self.shared_expert:
      w_gate = self.shared_w_gate[...] if self.gated else None
      y = y + self._ffn(xf, w_gate, self.shared_w_up[...], self.shared_w_down[...])

    y = jnp.where(valid[:, None], y, 0.0).reshape(b, t, d).astype(self.dtype)
    y = self.dropout(y)
    return partitioning.constrain(y, ("batch", "length", "embed")), aux
