"""Training the text LM (`models.lm.TransformerLM`), and the text LM of a workdir.

`train_lm(texts, tokenizer, cfg=...)` trains one with AdamW on normalised sentences
(`read_text_file` reads extra text, `encode_texts` turns sentences into labels).

The LM of a workdir is trained on the training transcripts and stored in `W/lm/`:
`moe-asr train-lm --workdir W` trains `config.model.lm` (fields of
`default_lm_config`, training fields under `config.lm_train`) on the
normalised transcripts of the training split plus any `--text` files, with the
run's tokenizer, and writes:

- `W/lm/params/`: an orbax checkpoint of the parameters;
- `W/lm/lm.json`: the model config, the tokenizer's sha256 (a mismatching
  tokenizer is refused on load), the training curve's last loss, and the
  validation perplexity.

Decoding loads it with `load_lm(W, tokenizer)` for shallow fusion and rescoring.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import pathlib
import shutil
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from moe_asr.data import pipeline as pipeline_lib
from moe_asr.data import text as text_lib
from moe_asr.data import tokenizer as tokenizer_lib
from moe_asr.models import lm as lm_lib
from moe_asr.training import inputs

_LOG = logging.getLogger(__name__)


# ---------------------------------------------------------------------------
# Training a text LM on sentences.
# ---------------------------------------------------------------------------


def read_text_file(path: str | epath.PathLike) -> list[str]:
  """Normalised non-empty lines of a UTF-8 text file (local or any `epath` path)."""
  lines = (
    text_lib.normalize(line) for line in epath.Path(path).read_text(encoding="utf-8").splitlines()
  )
  return [line for line in lines if line]


def encode_texts(
  texts: Sequence[str], tokenizer: tokenizer_lib.Tokenizer, max_len: int
) -> tuple[np.ndarray, np.ndarray]:
  """Labels `ids + [eos]` of each text, cut to `max_len` and padded with pad_id.

  Args:
    texts: normalised texts.
    tokenizer: the shared tokenizer.
    max_len: label length (longer texts lose their end, eos included).

  Returns:
    labels int32 [n, max_len] and mask bool [n, max_len].
  """
  labels = np.full((len(texts), max_len), tokenizer.pad_id, np.int32)
  mask = np.zeros((len(texts), max_len), bool)
  for i, text in enumerate(texts):
    ids = (tokenizer.encode(text) + [tokenizer.eos_id])[:max_len]
    labels[i, : len(ids)] = ids
    mask[i, : len(ids)] = True
  return labels, mask


def default_lm_config() -> ml_collections.ConfigDict:
  """Defaults of `train_lm`: model fields (see `from_config`) and training fields."""
  cfg = ml_collections.ConfigDict()
  cfg.d_model = 128  # Model width.
  cfg.num_heads = 4  # Attention heads.
  cfg.num_layers = 2  # Blocks.
  cfg.d_ff = 512  # Feed-forward width.
  cfg.dropout = 0.1  # Residual/FFN dropout.
  cfg.dtype = "float32"  # Compute dtype.
  cfg.steps = 1000  # Optimiser steps.
  cfg.batch_size = 32  # Sentences per step.
  cfg.learning_rate = 1e-3  # Peak AdamW learning rate.
  cfg.warmup_steps = 100  # Linear warm-up, then cosine decay to 10% of the peak.
  cfg.weight_decay = 0.01  # AdamW decay (matrices only, not norms or biases).
  cfg.grad_clip = 1.0  # Global-norm gradient clipping.
  cfg.label_smoothing = 0.0  # Target smoothing of the training loss.
  cfg.max_len = 64  # Tokens per sentence, eos included (longer ones are cut).
  cfg.seed = 0  # Parameters, dropout and shuffling.
  return cfg


def train_lm(
  texts: Sequence[str],
  tokenizer: tokenizer_lib.Tokenizer,
  *,
  cfg: ml_collections.ConfigDict,
  model: lm_lib.TransformerLM | None = None,
) -> tuple[lm_lib.TransformerLM, list[dict[str, float]]]:
  """Trains a text LM with AdamW on `texts`.

  Sentences are shuffled deterministically by `cfg.seed` (a new permutation
  each epoch) and batched at a fixed shape [batch_size, max_len], so the step
  compiles once.

  Args:
    texts: normalised sentences (e.g. corpus transcripts + `read_text_file`).
    tokenizer: the shared tokenizer.
    cfg: fields of `default_lm_config` (steps, batch_size, learning_rate,
      max_len and seed required; the rest default as there).
    model: an LM to continue training; built from `cfg` when None.

  Returns:
    The trained model (in eval mode) and one metrics dict per step
    (`step`, `loss`, `learning_rate`).
  """
  defaults = default_lm_config()
  get = lambda key: cfg.get(key, defaults[key])
  texts = [t for t in texts if t]
  if not texts:
    raise ValueError("train_lm needs at least one non-empty text")
  labels, mask = encode_texts(texts, tokenizer, cfg.max_len)
  if model is None:
    model_cfg = ml_collections.ConfigDict(
      {k: get(k) for k in ("d_model", "num_heads", "num_layers", "d_ff", "dropout", "dtype")}
    )
    model_cfg.max_len = cfg.max_len
    model_cfg.bos_id = tokenizer.bos_id
    model = lm_lib.TransformerLM.from_config(
      model_cfg, vocab_size=tokenizer.vocab_size, rngs=nnx.Rngs(cfg.seed)
    )

  steps = cfg.steps
  schedule = optax.warmup_cosine_decay_schedule(
    0.0,
    cfg.learning_rate,
    warmup_steps=min(get("warmup_steps"), max(steps - 1, 1)),
    decay_steps=max(steps, 2),
    end_value=0.1 * cfg.learning_rate,
  )
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
  tx = optax.chain(
    optax.clip_by_global_norm(get("grad_clip")),
    optax.adamw(schedule, weight_decay=get("weight_decay"), mask=decay_mask),
  )
  model.train()
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  graphdef, state = nnx.split((model, optimizer))
  smoothing = get("label_smoothing")

  @jax.jit
  def train_step(state, batch_labels, batch_mask):
    model, optimizer = nnx.merge(graphdef, state)
    loss_fn = lambda m: lm_lib.lm_loss(m, batch_labels, batch_mask, label_smoothing=smoothing)[0]
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return nnx.state((model, optimizer)), loss

  # Deterministic order: consecutive permutations of the sentences.
  rng = np.random.default_rng(cfg.seed)
  needed = steps * cfg.batch_size
  order = np.concatenate(
    [rng.permutation(len(texts)) for _ in range(math.ceil(needed / len(texts)))]
  )
  losses = []
  for step in range(steps):
    idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
    state, loss = train_step(state, jnp.asarray(labels[idx]), jnp.asarray(mask[idx]))
    losses.append(loss)
  nnx.update((model, optimizer), state)
  model.eval()
  rates = np.asarray(jax.vmap(schedule)(jnp.arange(steps)))
  metrics = [
    {"step": step + 1, "loss": float(loss), "learning_rate": float(rate)}
    for step, (loss, rate) in enumerate(zip(jax.device_get(losses), rates, strict=True))
  ]
  return model, metrics


# ---------------------------------------------------------------------------
# The LM of a workdir.
# ---------------------------------------------------------------------------


def lm_dir(workdir: str | pathlib.Path) -> pathlib.Path:
  return pathlib.Path(workdir) / "lm"


def _sha(tokenizer) -> str:
  return hashlib.sha256(tokenizer.to_bytes()).hexdigest()


def _model_config(cfg: ml_collections.ConfigDict, tokenizer) -> ml_collections.ConfigDict:
  model_cfg = ml_collections.ConfigDict(default_lm_config().to_dict())
  for key, value in cfg.model.lm.items():
    model_cfg[key] = value
  for key, value in (cfg.get("lm_train") or {}).items():
    model_cfg[key] = value
  model_cfg.bos_id = tokenizer.bos_id
  return model_cfg


def split_texts(cfg: ml_collections.ConfigDict, split: str) -> list[str]:
  """Normalised non-empty transcripts of a split of the run's dataset."""
  source = inputs.split_source(cfg, split)
  texts = (text_lib.normalize(pipeline_lib.as_str(source[i]["text"])) for i in range(len(source)))
  return [t for t in texts if t]


def perplexity(model: lm_lib.TransformerLM, texts: Sequence[str], tokenizer, max_len: int) -> float:
  """exp(mean negative log-likelihood per token, eos included) of `texts`."""
  labels, mask = encode_texts(list(texts), tokenizer, max_len)
  score = nnx.jit(lambda m, x, k: m.score(x, k))
  total, count = 0.0, 0
  for start in range(0, len(labels), 64):
    x, k = jnp.asarray(labels[start : start + 64]), jnp.asarray(mask[start : start + 64])
    total += float(score(model, x, k).sum())
    count += int(k.sum())
  return math.exp(-total / max(count, 1))


def train_workdir_lm(
  cfg: ml_collections.ConfigDict,
  workdir: str | pathlib.Path,
  *,
  text_files: Sequence[str] = (),
  steps: int | None = None,
) -> dict:
  """Trains the run's text LM and writes it to `W/lm/` (replacing an older one).

  Args:
    cfg: the run config (data, model.lm, optional lm_train overrides).
    workdir: the run's workdir.
    text_files: extra UTF-8 text, one sentence per line.
    steps: optimiser steps (default `lm_train.steps` or `default_lm_config().steps`).

  Returns:
    The summary written to `W/lm/lm.json`.
  """
  data = inputs.load_run_data(cfg, workdir)
  tokenizer = data.tokenizer
  texts = split_texts(cfg, cfg.data.train_split)
  for path in text_files:
    texts += read_text_file(path)
  if not texts:
    raise ValueError(f"No text to train an LM on (split {cfg.data.train_split!r}, {text_files})")
  model_cfg = _model_config(cfg, tokenizer)
  if steps is not None:
    model_cfg.steps = int(steps)
  _LOG.info("Training a text LM on %d sentences for %d steps", len(texts), model_cfg.steps)
  model, curve = train_lm(texts, tokenizer, cfg=model_cfg)
  summary = {
    "config": model_cfg.to_dict(),
    "vocab_size": tokenizer.vocab_size,
    "tokenizer_sha256": _sha(tokenizer),
    "sentences": len(texts),
    "final_loss": curve[-1]["loss"],
  }
  val_split = (cfg.data.get("eval_splits") or ("validation",))[0]
  try:
    val = split_texts(cfg, val_split)
  except (ValueError, KeyError, FileNotFoundError) as e:  # A dataset without that split.
    _LOG.warning("No %s split to measure LM perplexity on: %s", val_split, e)
    val = []
  if val:
    summary["val_split"] = val_split
    summary["val_perplexity"] = perplexity(model, val, tokenizer, model_cfg.max_len)
  out = lm_dir(workdir)
  tmp = out.with_name("lm.tmp")
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save((tmp / "params").absolute(), nnx.state(model, nnx.Param))
  (tmp / "lm.json").write_text(json.dumps(summary, indent=2))
  # Swap in the finished directory only: a killed run leaves the old LM intact.
  shutil.rmtree(out, ignore_errors=True)
  tmp.rename(out)
  _LOG.info("Wrote %s (val perplexity %s)", out, summary.get("val_perplexity"))
  return summary


def load_lm(workdir: str | pathlib.Path, tokenizer) -> lm_lib.TransformerLM | None:
  """The workdir's text LM in eval mode, or None if it has none.

  Raises:
    ValueError: the LM was trained with another tokenizer.
  """
  path = lm_dir(workdir)
  meta_path = path / "lm.json"
  if not meta_path.exists():
    return None
  meta = json.loads(meta_path.read_text())
  if meta["tokenizer_sha256"] != _sha(tokenizer):
    raise ValueError(
      f"{path} was trained with another tokenizer (sha256 {meta['tokenizer_sha256'][:12]}...); "
      "retrain it with `moe-asr train-lm`"
    )
  model_cfg = ml_collections.ConfigDict(meta["config"])
  model = lm_lib.TransformerLM.from_config(
    model_cfg, vocab_size=meta["vocab_size"], rngs=nnx.Rngs(0)
  )
  with ocp.StandardCheckpointer() as ckptr:
    params = ckptr.restore((path / "params").absolute(), nnx.state(model, nnx.Param))
  nnx.update(model, params)
  model.eval()
  return model
