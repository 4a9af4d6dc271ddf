"""The text LM of a workdir: trained on the training transcripts, stored in `W/lm/`.

`moe-asr train-lm --workdir W` trains `config.model.lm` (fields of
`models.lm.default_lm_config`, training fields under `config.lm_train`) on the
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

import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx

from moe_asr.data import pipeline as pipeline_lib
from moe_asr.data import text as text_lib
from moe_asr.models import lm as lm_lib
from moe_asr.training import inputs

_LOG = logging.getLogger(__name__)


def lm_dir(workdir: str | pathlib.Path) -> pathlib.Path:
  return pathlib.Path(workdir) / "lm"


def _sha(tokenizer) -> str:
  return hashlib.sha256(tokenizer.to_bytes()).hexdigest()


def _model_config(cfg: ml_collections.ConfigDict, tokenizer) -> ml_collections.ConfigDict:
  model_cfg = ml_collections.ConfigDict(lm_lib.default_lm_config().to_dict())
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
  labels, mask = lm_lib.encode_texts(list(texts), tokenizer, max_len)
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
    texts += lm_lib.read_text_file(path)
  if not texts:
    raise ValueError(f"No text to train an LM on (split {cfg.data.train_split!r}, {text_files})")
  model_cfg = _model_config(cfg, tokenizer)
  if steps is not None:
    model_cfg.steps = int(steps)
  _LOG.info("Training a text LM on %d sentences for %d steps", len(texts), model_cfg.steps)
  model, curve = lm_lib.train_lm(texts, tokenizer, cfg=model_cfg)
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
