"""Transfer a trained run to a new language or a new task: `moe-asr transfer`.

  moe-asr transfer --from W --workdir W2 --language ru --method expert [--replay 0.1]

From the source workdir `W` (its config, tokenizer, run data and newest checkpoint) a
transfer run in `W2`:

1. extends the tokenizer with the new data's characters (`Tokenizer.extend`; every old id
   kept, `transfer.extra_pieces` more pieces on request);
2. grows every vocabulary-sized parameter (CTC head, decoder embedding, which is also its
   output layer, the intermediate-CTC conditioner, the word tagger's token embedding): old
   rows are copied bit for bit, new rows start at the mean of the old ones (so a new token's
   logit starts at the mean of the old logits, never above their maximum: greedy outputs of
   the old languages do not change). The new tokens belong to the new language
   (`model.token_languages`, `transfer.vocab_gate="language"`): their CTC logits get
   log p(new language | frame) added, so frames the LID gives to another language do not
   emit them however training moves their rows;
3. for a language the source never heard (`transfer.new_language`, by default: the source's
   LID does not pick it for the new data) gives it an LID class (grown where the language
   axis lacks one, restarted where the source has one it never trained) that starts as the
   nearest language's with its bias `transfer.lid_margin` lower, and in every section
   routed by language (`router="language"`) a new expert that the language is mapped to
   (`expert_map`), initialised from the expert of the nearest language: the one the source's
   utterance LID gives the new data most often (`transfer.init_language`). Sections with a
   learned or hybrid router get no new expert (a new router column would change the old
   languages' routing); their map sends the language to the nearest language's expert;
4. gives the language its task-head slices (copied from the nearest language's), or, for a
   new intent / slot set (a new task), heads of the new set: classes the source knows keep
   their rows (by name), new ones start fresh, the encoder is kept;
5. trains what the method names: `expert` the new vocabulary rows, the new experts, the
   language's LID and task-head slices (the whole heads for a new task); `lora` and
   `adapters` those plus LoRA on the attention projections / residual adapters (after the
   blocks above the LID layer, gated frame by frame by the new language's LID posterior;
   `transfer.adapter_gate="none"`: after every block, ungated); `full` everything. Parts
   of a parameter are frozen by masking the update (`slice_mask`), whole parameters by
   `train.trainable`. `--replay 0.1` mixes that fraction of the old training split into
   the new one;
6. scores the new language (`heldout_test`) and the old ones (`test`, `test_cs`) with the
   source and the transferred model: `W2/transfer/report.json` and `report.md`, with the
   change of each score (forgetting) and the share of parameters trained.

Everything lives in `config.transfer` (saved with the run), so `moe-asr train` with that
section does the same, a transferred run resumes like any run and `eval` / `transcribe` need
nothing but its workdir.
"""

from __future__ import annotations

import json
import logging
import math
import pathlib
import re
import time
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from moe_asr import config_lib
from moe_asr.data import languages as langs_lib
from moe_asr.data import tokenizer as tokenizer_lib
from moe_asr.evaluation import report as report_lib

_LOG = logging.getLogger(__name__)

METHODS = ("expert", "lora", "adapters", "full")
HELDOUT_TRAIN, HELDOUT_TEST = "heldout_train", "heldout_test"
# LoRA on the attention projections of the encoder and the decoder.
LORA_TARGET = (
  r"^encoder/blocks/\d+/mha/linear_(q|k|v|out)$"
  r"|^decoder/blocks/\d+/(self|cross)_attention/(query|key|value|out)$"
)
ADAPTER_TARGET = r"^encoder/blocks/\d+$"  # A residual adapter after each encoder block.
# Parameters whose vocabulary axis grows with the tokenizer: {name regex: axis}.
VOCAB_AXES = {
  r"ctc_head/kernel": 1,
  r"ctc_head/bias": 0,
  r"decoder/embedder/embedding": 0,
  r"inter_ctc_conditioner/kernel": 0,
  r"task_heads/word_tagger/token_embedding/embedding": 0,
}
# Parameters with a language axis: {name regex: axis}.
LANGUAGE_AXES = {
  r"encoder/conditioners/\d+/(gamma|beta|embedding)": 0,
  r"encoder/(frame_lid/lang_proj|utt_lid/out)/kernel": 1,
  r"encoder/(frame_lid/lang_proj|utt_lid/out)/bias": 0,
  r"task_heads/(intent|slot)_(kernel|bias)": 0,
}
EXPERT_PARAMS = r"(encoder|decoder)/blocks/\d+/(ff2|ffn)/w_(gate|up|down)"
LID_OUT = r"encoder/(frame_lid/lang_proj|utt_lid/out)/(kernel|bias)"


def config_section() -> ml_collections.ConfigDict:
  """`config.transfer`: what a transfer run starts from and trains."""
  c = ml_collections.ConfigDict()
  c.source = ""  # Workdir of the source run ("" = no transfer).
  c.language = ""  # Code of the new data's language.
  c.method = "expert"  # One of METHODS.
  c.data = ""  # Dataset of the new language ("" = the source's, its heldout splits).
  c.replay = 0.0  # Fraction of old-language training data in the mix.
  c.extra_pieces = 0  # Tokenizer pieces to learn beyond the new characters.
  c.init_language = "auto"  # Nearest old language ("auto": by the source's LID).
  c.new_language = "auto"  # "auto", "yes" or "no": does the source know the language?
  c.lora_rank = 8
  c.lora_alpha = 16.0
  c.adapter_bottleneck = 32
  # "language": adapters after the blocks above the LID layer only, each scaled frame by
  # frame by the new language's LID posterior, so other languages' frames pass unchanged;
  # "none": after every encoder block, on every frame.
  c.adapter_gate = "language"
  # The new LID class starts as a copy of the nearest language's, this far (in logits)
  # below it: never the argmax at first, yet a few nats from winning on the new data.
  c.lid_margin = 4.0
  # "language": the tokens the new language adds are emitted only where the frame LID says
  # it (`model.token_languages`); "none": everywhere, in competition with the old ones.
  c.vocab_gate = "language"
  # "mix": with replay, the LID losses add the mix's log prior of each language (logit
  # adjustment), so 90% new-language data does not teach the LID to say it everywhere.
  c.lid_prior = "mix"
  c.new_splits = (HELDOUT_TEST,)  # Scored for the new language.
  c.old_splits = ("test", "test_cs")  # Scored for forgetting.
  # Filled in by `transfer_config` (what the growth and the freezing need).
  c.old_vocab_size = 0
  c.old_num_languages = 0
  c.old_experts = ml_collections.ConfigDict({"encoder": 0, "decoder": 0})
  c.old_expert_maps = ml_collections.ConfigDict({"encoder": "", "decoder": ""})
  c.old_intents = ()
  c.old_slot_types = ()
  c.old_data = ml_collections.ConfigDict({"name": "", "data_dir": ""})
  c.slices = ()  # ((param regex, axis, start, stop), ...): the trained part of a parameter.
  return c


def _source_config(source: str | pathlib.Path) -> ml_collections.ConfigDict:
  from moe_asr.evaluation import score

  return score.workdir_config(source)


def _source_run_data(source: pathlib.Path) -> dict:
  path = source / "run_data.json"
  return json.loads(path.read_text("utf-8")) if path.exists() else {}


def _expert_map(section, num_languages: int) -> tuple[int, ...]:
  from moe_asr.models import moe

  return moe.resolve_expert_map(
    section.get("expert_map", "modulo"), num_languages, max(section.num_experts, 1)
  )


def _routed(section) -> bool:
  return bool(section.get("moe_layers")) and section.get("num_layers", 1) > 0


def nearest_language(
  source: str | pathlib.Path, cfg: ml_collections.ConfigDict, split: str, max_batches: int = 4
) -> tuple[str, dict[str, float]]:
  """The language the source model's utterance LID gives `split` of `cfg`'s data most mass.

  Returns:
    (code, {code: mean posterior}) over the source's languages.
  """
  from flax import nnx

  from moe_asr import runtime
  from moe_asr.data import pipeline as pipeline_lib
  from moe_asr.models import partitioning
  from moe_asr.training import inputs, sharding

  source = pathlib.Path(source)
  src_cfg = _source_config(source)
  run = runtime.build_run(src_cfg, source, for_training=False)
  look = ml_collections.ConfigDict(src_cfg.to_dict())
  look.data.name, look.data.data_dir = cfg.data.name, cfg.data.data_dir
  look.model.phone_ctc.layers = ()  # No phone targets needed here.
  data = inputs.RunData(run.data.tokenizer, pipeline_lib.Vocabularies((), ()), {})
  pipe = inputs.make_pipeline(look, split, data, train=False, process_index=0, process_count=1)
  total, count = None, 0.0
  with run.mesh, partitioning.axis_rules(run.rules, run.mesh):
    model = nnx.merge(run.graphdef, run.rng_state, run.state).model
    model.eval()
    encode = nnx.jit(lambda m, b: m.encode(b).utt_probs)
    for i, batch in enumerate(pipe):
      if i >= max_batches:
        break
      keep = np.asarray(batch["example_mask"])
      device = sharding.put_batch(pipeline_lib.device_arrays(batch), run.batch_shardings(batch))
      probs = np.asarray(jax.device_get(encode(model, device)))[keep]
      total = probs.sum(0) if total is None else total + probs.sum(0)
      count += len(probs)
  if not count:
    raise ValueError(f"{cfg.data.name}:{split} gave no utterance to pick the nearest language")
  mean = total / count
  codes = [langs_lib.LANGUAGE_CODES[i] for i in range(len(mean))]
  posteriors = {code: float(p) for code, p in zip(codes, mean, strict=True)}
  return codes[int(np.argmax(mean))], posteriors


def _texts(cfg: ml_collections.ConfigDict, split: str) -> list[str]:
  from moe_asr.data import pipeline as pipeline_lib
  from moe_asr.training import inputs

  source = inputs.split_source(cfg, split)
  return [t for t in (pipeline_lib.as_str(source[i]["text"]) for i in range(len(source))) if t]


def extend_tokenizer(
  tokenizer: tokenizer_lib.Tokenizer, texts: Sequence[str], language: str, extra_pieces: int = 0
) -> tokenizer_lib.Tokenizer:
  """The tokenizer plus the characters of `texts` it lacks (and `extra_pieces` more)."""
  known = set()
  for i in range(tokenizer.vocab_size):
    piece = tokenizer.id_to_piece(i).lstrip(tokenizer_lib.WORD_START)
    if len(piece) == 1:
      known.add(piece)
  missing = {c for t in texts for c in t if not c.isspace()} - known
  count = len(missing) + int(extra_pieces)
  if count == 0 and language in tokenizer.languages:
    return tokenizer
  return tokenizer.extend(texts, num_new_pieces=count, language=language)


def _split_size(cfg: ml_collections.ConfigDict, split: str) -> int:
  from moe_asr.training import inputs

  return len(inputs.split_source(cfg, split))


def _choose_languages(t, source: pathlib.Path, cfg, src_data: Mapping, language: str, split):
  """Settles `t.new_language` and `t.init_language` where they are "auto".

  The source's corpus config names the languages it was trained on; otherwise the source's
  LID posteriors on the new data's training split say which language it is nearest.
  """
  trained_on = (src_data.get("metadata") or {}).get("corpus_config", {}).get("languages")
  if t.new_language == "auto" and trained_on:  # The source's corpus names its languages.
    t.new_language = "no" if language in trained_on else "yes"
  if t.init_language == "auto" or t.new_language == "auto":
    split = split.split("+")[0]
    nearest, posteriors = nearest_language(source, cfg, split)
    _LOG.info("Source LID posteriors of %s:%s: %s", cfg.data.name, split, posteriors)
    if t.new_language == "auto":
      t.new_language = "no" if nearest == language else "yes"
    if t.init_language == "auto":
      if nearest == language:  # Known: its own slices are the nearest.
        old = {c: p for c, p in posteriors.items() if c != language}
        nearest = max(old, key=old.get)
      t.init_language = nearest


def _expert_slices(cfg, src, t, index: int, new_language: bool) -> list[tuple[str, int, int, int]]:
  """The expert maps of the transfer (`cfg` and `t` updated) and the expert slices to train.

  A new language gets an expert of its own under the language router (the one expert's
  slice trains) and `t.init_language`'s expert under the hybrid one.
  """
  num_languages = int(src.model.num_languages)
  slices: list[tuple[str, int, int, int]] = []
  for name in ("encoder", "decoder"):
    sec = cfg.model[name]
    t.old_experts[name] = int(sec.num_experts)
    if not _routed(sec):
      continue
    old_map = list(_expert_map(src.model[name], num_languages))
    t.old_expert_maps[name] = " ".join(map(str, old_map))
    if len(old_map) < cfg.model.num_languages:
      old_map += [0] * (cfg.model.num_languages - len(old_map))
    if not new_language or sec.router not in ("language", "hybrid"):
      continue
    init_expert = old_map[langs_lib.language_index(t.init_language)]
    if sec.router == "language":
      old_map[index] = int(sec.num_experts)
      sec.num_experts = int(sec.num_experts) + 1
      layer = r"encoder/blocks/\d+/ff2" if name == "encoder" else r"decoder/blocks/\d+/ffn"
      slices.append((rf"{layer}/w_(gate|up|down)", 0, old_map[index], old_map[index] + 1))
    else:
      old_map[index] = init_expert
    sec.expert_map = " ".join(map(str, old_map))
  return slices


def _trainable(method: str, train_whole: Sequence[str], slices: Sequence[tuple]) -> str:
  """`config.train.trainable` of a transfer: what trains whole, the sliced parameters and
  the method's own modules (LoRA, adapters); "" (everything) for the full method."""
  if method == "full":
    return ""
  whole = [*train_whole, *(p for p, *_ in slices)]
  if method == "lora":
    whole.append(r".*/lora_(a|b)")
  elif method == "adapters":
    whole.append(r".*/adapter/.*")
  return "|".join(f"(?:{p})" for p in whole) if whole else "$^"


def transfer_config(
  source: str | pathlib.Path,
  workdir: str | pathlib.Path,
  *,
  language: str,
  method: str = "expert",
  data: str = "",
  replay: float = 0.0,
  overrides: Sequence[str] = (),
  section: Mapping | None = None,
) -> ml_collections.ConfigDict:
  """The run config of a transfer (and the extended tokenizer, written to `workdir`).

  Args:
    source: the source run's workdir.
    workdir: the transfer run's workdir.
    language: the new data's language code.
    method: one of METHODS.
    data: the new language's dataset ("" = the source's dataset, `heldout_*` splits).
    replay: fraction of old training data mixed in (same dataset only).
    overrides: `a.b=value` overrides applied last (`train.steps=300`, ...).
    section: other `config.transfer` settings (e.g. from a config file).

  Returns:
    The config, `transfer` section filled in; `workdir/tokenizer.model` written.
  """
  from moe_asr.training import inputs

  source, workdir = pathlib.Path(source).resolve(), pathlib.Path(workdir)
  if method not in METHODS:
    raise ValueError(f"transfer method must be one of {METHODS}, got {method!r}")
  langs_lib.check_language(language)
  if not 0.0 <= replay < 1.0:
    raise ValueError(f"replay must be in [0, 1), got {replay}")
  src = _source_config(source)
  src_data = _source_run_data(source)
  cfg = ml_collections.ConfigDict(src.to_dict())
  t = config_section()
  t.update(dict(section or {}))
  t.source, t.language, t.method, t.replay = str(source), language, method, float(replay)
  t.data = data or t.data
  cfg.transfer = t
  # The section's own overrides first: the settings below are decided from them.
  config_lib.apply_overrides(cfg, [o for o in overrides if o.startswith("transfer.")])
  cfg.resume, cfg.init_from = "", ""
  # The tokenizer and the data of the new language.
  cfg.data.tokenizer = ""
  t.old_data.name, t.old_data.data_dir = src.data.name, src.data.data_dir
  same_data = not t.data or t.data == src.data.name
  if not same_data:
    cfg.data.name, cfg.data.config = t.data, ""
    train_split = "train"
    if tuple(t.new_splits) == (HELDOUT_TEST,):
      t.new_splits = ("test",)
  else:
    train_split = HELDOUT_TRAIN
  # Overrides may point the data elsewhere (data_dir) before anything is read.
  data_overrides = [
    o for o in overrides if o.removeprefix("--").removeprefix("config.").startswith("data.")
  ]
  config_lib.apply_overrides(cfg, data_overrides)
  texts = _texts(cfg, train_split)
  old_tok = tokenizer_lib.Tokenizer.load(source / "tokenizer.model")
  tokenizer = extend_tokenizer(old_tok, texts, language, t.extra_pieces) if texts else old_tok
  workdir.mkdir(parents=True, exist_ok=True)
  report_lib.write_atomic(workdir / "tokenizer.model", tokenizer.to_bytes())
  t.old_vocab_size = old_tok.vocab_size
  if replay > 0:
    if not same_data:
      raise ValueError("replay mixes in the source's training split: it needs the same dataset")
    n_new = _split_size(cfg, train_split)
    n_old = max(1, round(replay / (1 - replay) * n_new))
    n_old = min(n_old, _split_size(cfg, src.data.train_split))
    replay_split = f"{src.data.train_split}[:{n_old}]"
    train_split = f"{train_split}+{replay_split}"
  cfg.data.train_split = train_split
  cfg.data.eval_splits = tuple(t.new_splits)[:1]
  cfg.eval.splits = (*t.new_splits, *(t.old_splits if same_data else ()))
  # Languages, experts, task vocabularies.
  num_languages = int(src.model.num_languages)
  t.old_num_languages = num_languages
  index = langs_lib.language_index(language)
  _choose_languages(t, source, cfg, src_data, language, train_split)
  new_language = t.new_language == "yes"
  if new_language and index >= num_languages:
    cfg.model.num_languages = index + 1  # Referenced by every section's num_languages.
  if replay > 0 and new_language:
    _set_lid_prior(cfg, index, num_languages, n_new / (n_new + n_old), replay_split)
  slices = _expert_slices(cfg, src, t, index, new_language)
  train_whole: list[str] = []
  # Vocabulary rows.
  if tokenizer.vocab_size > old_tok.vocab_size:
    for pattern, axis in VOCAB_AXES.items():
      slices.append((pattern, axis, old_tok.vocab_size, tokenizer.vocab_size))
    _gate_new_tokens(cfg, old_tok.vocab_size, tokenizer.vocab_size, language)
  # The language's LID class and task-head slices.
  if new_language:
    slices.append((LID_OUT.replace("(kernel|bias)", "kernel"), 1, index, index + 1))
    slices.append((LID_OUT.replace("(kernel|bias)", "bias"), 0, index, index + 1))
  t.old_intents = tuple(src_data.get("intents", ()))
  t.old_slot_types = tuple(src_data.get("slot_types", ()))
  new_vocab = inputs.task_vocabularies(cfg, workdir, {} if not same_data else src_data)
  new_task = (tuple(new_vocab.intents), tuple(new_vocab.slot_types)) != (
    t.old_intents,
    t.old_slot_types,
  )
  if new_task:
    train_whole.append(r"task_heads/(intent|slot)_(kernel|bias)")
  elif new_language:
    slices.append((r"task_heads/(intent|slot)_(kernel|bias)", 0, index, index + 1))
  slices = [(_tolerant(p), a, s, e) for p, a, s, e in slices]
  train_whole = [_tolerant(p) for p in train_whole]
  t.slices = tuple(slices)
  # What trains.
  cfg.train.trainable = _trainable(method, train_whole, slices)
  if method == "full":
    t.slices = ()
  config_lib.apply_overrides(cfg, overrides)
  return cfg


# ---------------------------------------------------------------------------
# Hooks of the model, the optimizer and the initialisation.
# ---------------------------------------------------------------------------


def _section(cfg: ml_collections.ConfigDict):
  t = cfg.get("transfer")
  return t if t is not None and t.get("source") else None


def add_modules(model, cfg: ml_collections.ConfigDict) -> None:
  """LoRA or residual adapters of a `lora` / `adapters` transfer, inserted in `model`."""
  t = _section(cfg)
  if t is None:
    return
  from flax import nnx

  from moe_asr.models import adapters

  rngs = nnx.Rngs(cfg.seed + 17)
  if t.method == "lora":
    n = adapters.add_lora(
      model, rank=int(t.lora_rank), alpha=float(t.lora_alpha), target=LORA_TARGET, rngs=rngs
    )
  elif t.method == "adapters":
    target, gate = adapter_target(cfg)
    n = adapters.add_residual_adapters(
      model, target=target, bottleneck=int(t.adapter_bottleneck), rngs=rngs, gate_language=gate
    )
  else:
    return
  if not n:
    raise ValueError(f"transfer method {t.method!r}: no module of the model to wrap")


def _set_lid_prior(
  cfg, new: int, old_num_languages: int, new_share: float, replay_split: str
) -> None:
  """`train.loss.lid_log_prior` of a transfer with replay (`transfer.lid_prior="mix"`)."""
  mode = cfg.transfer.get("lid_prior", "mix")
  if mode not in ("mix", "none"):
    raise ValueError(f"transfer.lid_prior must be 'mix' or 'none', got {mode!r}")
  if mode == "mix":
    num_languages = int(cfg.model.num_languages)
    counts = utterance_languages(cfg, replay_split)
    _LOG.info("Replayed utterances by language (%s): %s", replay_split, counts)
    cfg.train.loss.lid_log_prior = mix_log_prior(
      num_languages, new, old_num_languages, new_share, old_counts=counts
    )


def utterance_languages(cfg: ml_collections.ConfigDict, split: str) -> dict[str, int]:
  """Utterances of `split` per dominant language (the utterance LID's target), by code."""
  from moe_asr.data import pipeline as pipeline_lib
  from moe_asr.training import inputs

  source = inputs.split_source(cfg, split)
  counts: dict[str, int] = {}
  for i in range(len(source)):
    ex = source[i]
    words = [pipeline_lib.as_str(w) for w in ex.get("words_lang", ())]
    code = pipeline_lib.utterance_language(words, pipeline_lib.as_str(ex.get("language", "")))
    if code:
      counts[code] = counts.get(code, 0) + 1
  return counts


def _gate_new_tokens(cfg, old_vocab: int, new_vocab: int, language: str) -> None:
  """Adds the new tokens to `model.token_languages` (`transfer.vocab_gate="language"`)."""
  mode = cfg.transfer.vocab_gate
  if mode not in ("language", "none"):
    raise ValueError(f"transfer.vocab_gate must be 'language' or 'none', got {mode!r}")
  if mode == "language":
    span = (old_vocab, new_vocab, language)
    cfg.model.token_languages = (*tuple(cfg.model.get("token_languages", ())), span)


def mix_log_prior(
  num_languages: int,
  new: int,
  old_num_languages: int,
  new_share: float,
  old_counts: Mapping[str, int] | None = None,
) -> tuple[float, ...]:
  """Log prior of each LID class in a transfer's mix: the new language at `new_share`, the
  rest shared by the source's other languages in proportion to `old_counts` (utterances of
  the replayed data per language code, add-one smoothed so that a language the replay
  happens to miss keeps a finite prior), or evenly without counts. Classes of neither get
  the share of an old language without replayed utterances (evenly: the old share)."""
  old = [i for i in range(old_num_languages) if i != new]
  rest = 1.0 - new_share
  if old_counts:
    unknown = sorted(set(old_counts) - set(langs_lib.LANGUAGE_CODES))
    if unknown:
      raise ValueError(f"replayed utterances of unknown languages {unknown}")
    by_index = {langs_lib.language_index(c): int(n) for c, n in old_counts.items()}
    total = sum(by_index.get(i, 0) + 1 for i in old)
    share = {i: rest * (by_index.get(i, 0) + 1) / total for i in old}
    floor = rest / total
  else:
    share = {i: rest / max(len(old), 1) for i in old}
    floor = rest / max(len(old), 1)
  prior = [math.log(share.get(i, floor)) for i in range(num_languages)]
  prior[new] = math.log(new_share)
  return tuple(prior)


def adapter_target(cfg: ml_collections.ConfigDict) -> tuple[str, int | None]:
  """(regex of the encoder blocks an `adapters` transfer wraps, the gating language or None)."""
  t = cfg.transfer
  gate = t.get("adapter_gate", "none")  # Runs saved before the gate existed were ungated.
  if gate == "none":
    return ADAPTER_TARGET, None
  if gate != "language":
    raise ValueError(f"transfer.adapter_gate must be 'language' or 'none', got {gate!r}")
  e = cfg.model.encoder
  above = [str(i) for i in range(int(e.lid_layer) + 1, int(e.num_layers))]
  if not above:
    raise ValueError(
      f"transfer.adapter_gate='language' needs encoder blocks above the LID layer "
      f"(lid_layer={e.lid_layer}, num_layers={e.num_layers}); use 'none'"
    )
  index = langs_lib.language_index(t.language)
  if index >= int(cfg.model.num_languages):
    raise ValueError(
      f"transfer.language={t.language!r} (language {index}) has no LID class in a model of "
      f"{cfg.model.num_languages} languages"
    )
  return rf"^encoder/blocks/({'|'.join(above)})$", index


def slice_mask(slices: Sequence[Sequence]) -> optax.GradientTransformation:
  """Zeroes every update outside `[start, stop)` along `axis` of parameters matching a regex.

  The last transformation of the chain, so weight decay does not move the frozen part either.
  """
  from moe_asr.training import state as state_lib

  rules = [(re.compile(str(p)), int(a), int(s), int(e)) for p, a, s, e in slices]

  def update(updates, state, params=None):
    del params

    def mask(path, u):
      name = state_lib.path_name(path)
      for pattern, axis, start, stop in rules:
        if pattern.fullmatch(name) and u.ndim > axis:
          index = jnp.arange(u.shape[axis])
          keep = ((index >= start) & (index < stop)).astype(u.dtype)
          shape = [1] * u.ndim
          shape[axis] = u.shape[axis]
          return u * keep.reshape(shape)
      return u

    return jax.tree_util.tree_map_with_path(mask, updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def optimizer_mask(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation | None:
  t = _section(cfg)
  return slice_mask(t.slices) if t is not None and t.slices else None


def _tolerant(pattern: str) -> str:
  """A parameter regex that also matches inside an adapter-wrapped block (`.../inner/...`)."""
  return pattern.replace(r"blocks/\d+/", r"blocks/\d+/(?:inner/)?")


def _source_name(name: str) -> str:
  """The source's name of a parameter (LoRA and adapters wrap modules: `base`, `inner`)."""
  return name.replace("/base/", "/").replace("/inner/", "/")


def _grow(name: str, old: np.ndarray, fresh: np.ndarray, cfg) -> np.ndarray:
  """`old` grown to `fresh`'s shape: old entries copied, new ones by the rules above."""
  t = cfg.transfer
  name = _source_name(name)
  axes = [i for i, (a, b) in enumerate(zip(old.shape, fresh.shape, strict=True)) if a != b]
  if len(axes) != 1 or fresh.shape[axes[0]] < old.shape[axes[0]]:
    raise ValueError(f"{name}: cannot grow {old.shape} to {fresh.shape}")
  axis = axes[0]
  extra = fresh.shape[axis] - old.shape[axis]
  init = langs_lib.language_index(t.init_language) if t.init_language else 0
  if re.fullmatch(EXPERT_PARAMS, name):
    section = name.split("/")[0]
    old_map = [int(e) for e in str(t.old_expert_maps[section]).split()]
    new = np.repeat(np.take(old, [old_map[init]], axis=axis), extra, axis=axis)
  elif any(re.fullmatch(p, name) for p in LANGUAGE_AXES):
    new = np.repeat(np.take(old, [init], axis=axis), extra, axis=axis)
  else:  # A vocabulary axis: the mean of the old rows.
    new = np.repeat(old.mean(axis=axis, keepdims=True), extra, axis=axis)
  return np.concatenate([old, new.astype(old.dtype)], axis=axis)


def _remap_classes(name: str, old: np.ndarray, fresh: np.ndarray, cfg, data) -> np.ndarray:
  """Task heads of another intent / slot set: known classes keep their rows (by name)."""
  t = cfg.transfer
  if "intent" in name:
    old_names, new_names = list(t.old_intents), list(data.vocab.intents)
  else:
    from moe_asr.data import pipeline as pipeline_lib

    old_names = list(pipeline_lib.Vocabularies((), tuple(t.old_slot_types)).slot_tags)
    new_names = list(data.vocab.slot_tags)
  out = np.array(fresh, copy=True)
  for j, label in enumerate(new_names):
    if label in old_names and old.shape[:-1] == fresh.shape[:-1]:
      out[..., j] = old[..., old_names.index(label)]
  return out


def source_params(workdir: str | pathlib.Path) -> dict[str, np.ndarray]:
  """{name: array} of the model parameters of a workdir's newest checkpoint."""
  from moe_asr import runtime
  from moe_asr.training import checkpoint as checkpoint_lib

  directory = str(pathlib.Path(workdir) / "checkpoints")
  step = checkpoint_lib.Checkpointer(directory, async_save=False).latest_step()
  if step is None:
    raise FileNotFoundError(f"{directory} holds no checkpoint")
  return runtime.saved_params(directory, step)


def language_slot_from_nearest(
  name: str, value: np.ndarray, index: int, init: int, cfg: ml_collections.ConfigDict
) -> np.ndarray:
  """`value` with language `index`'s entries set to language `init`'s (a no-op for a
  parameter without a language axis).

  A language the source never heard has entries it never trained (where its language axis
  already had the slot) or none (grown by `_grow`): either way they start as the nearest
  language's, so a frame that the LID gives to the new language is conditioned, routed and
  classified as the nearest language's would be. Its LID class starts `transfer.lid_margin`
  below the nearest's: never the argmax at first, a few nats from winning on the new data.
  """
  axis = next((a for p, a in LANGUAGE_AXES.items() if re.fullmatch(p, name)), None)
  if axis is None or value.ndim <= axis or value.shape[axis] <= max(index, init):
    return value
  value = np.array(value, copy=True)
  slot = np.take(value, init, axis=axis)
  if re.fullmatch(LID_OUT, name) and name.endswith("bias"):
    slot = slot - float(cfg.transfer.get("lid_margin", 4.0))
  where = [slice(None)] * value.ndim
  where[axis] = index
  value[tuple(where)] = slot
  return value


def init_from_source(run) -> object:
  """The run's state with the source's parameters copied in and grown (see the module doc)."""
  from moe_asr.training import state as state_lib

  cfg = run.config
  t = cfg.transfer
  saved = source_params(t.source)
  index = langs_lib.language_index(t.language)
  init = langs_lib.language_index(t.init_language) if t.init_language else None
  new_task = (tuple(run.data.vocab.intents), tuple(run.data.vocab.slot_types)) != (
    tuple(t.old_intents),
    tuple(t.old_slot_types),
  )
  counts = {"copied": 0, "grown": 0, "fresh": 0, "remapped": 0}

  def take(path, leaf):
    name = state_lib.path_name(path)
    old = saved.get(_source_name(name))
    fresh = np.asarray(jax.device_get(leaf))
    if old is None:
      counts["fresh"] += 1
      return leaf
    task_head = re.fullmatch(r"task_heads/(intent|slot)_(kernel|bias)", name)
    if task_head and new_task:
      if old.shape[:-1] != fresh.shape[:-1]:  # A grown language axis too.
        old = _grow(name, old, np.zeros(fresh.shape[:-1] + old.shape[-1:], old.dtype), cfg)
      value = _remap_classes(name, old, fresh, cfg, run.data)
      counts["remapped"] += 1
    elif old.shape == fresh.shape:
      value = old
      counts["copied"] += 1
    else:
      value = _grow(name, old, fresh, cfg)
      counts["grown"] += 1
    if t.new_language == "yes" and init is not None and not (task_head and new_task):
      value = language_slot_from_nearest(_source_name(name), value, index, init, cfg)
    return jax.device_put(value.astype(fresh.dtype), leaf.sharding)

  state = run.state
  state["model"] = jax.tree_util.tree_map_with_path(take, state["model"])
  _LOG.info("Transfer from %s: %s parameter arrays", t.source, counts)
  if not counts["copied"] + counts["grown"]:
    raise ValueError(f"transfer.source={t.source!r}: no parameter matches this model")
  return state


# ---------------------------------------------------------------------------
# The run and its report.
# ---------------------------------------------------------------------------


def slice_rules(cfg: ml_collections.ConfigDict) -> list[tuple[re.Pattern, int, int, int]]:
  """The compiled `transfer.slices` of a config."""
  t = _section(cfg)
  return [(re.compile(str(p)), int(a), int(s), int(e)) for p, a, s, e in (t.slices if t else ())]


def trained_mask(
  name: str, old_shape: Sequence[int], new_shape: Sequence[int], cfg, rules=None
) -> np.ndarray:
  """bool [old_shape]: the entries of a source parameter the transfer trains."""
  from moe_asr.training import state as state_lib

  rules = slice_rules(cfg) if rules is None else rules
  if state_lib.param_label(name, cfg) == "frozen":
    return np.zeros(old_shape, bool)
  for pattern, axis, start, stop in rules:
    if pattern.fullmatch(name) and len(new_shape) > axis:
      index = np.arange(old_shape[axis])
      keep = (index >= start) & (index < stop)
      shape = [1] * len(old_shape)
      shape[axis] = old_shape[axis]
      return np.broadcast_to(keep.reshape(shape), tuple(old_shape))
  return np.ones(old_shape, bool)


def trainable_share(cfg: ml_collections.ConfigDict, state) -> dict[str, float]:
  """Parameters in total and trained (whole parameters and slices), and the share."""
  from moe_asr.training import state as state_lib

  t = _section(cfg)
  rules = [(re.compile(str(p)), int(a), int(s), int(e)) for p, a, s, e in (t.slices if t else ())]
  total = trained = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(state["model"]):
    name = state_lib.path_name(path)
    size = int(np.prod(leaf.shape))
    total += size
    if state_lib.param_label(name, cfg) == "frozen":
      continue
    for pattern, axis, start, stop in rules:
      if pattern.fullmatch(name) and len(leaf.shape) > axis:
        size = size // leaf.shape[axis] * max(0, min(stop, leaf.shape[axis]) - start)
        break
    trained += size
  return {"params_total": total, "params_trained": trained, "trained_share": trained / total}


def _scores(report: Mapping) -> dict[str, dict[str, float | None]]:
  keys = ("cer", "wer", "mer", "lid_acc", "intent_acc", "slot_f1")
  return {split: {k: s.get(k) for k in keys} for split, s in report["splits"].items()}


def _old_overrides(cfg) -> list[str]:
  t = cfg.transfer
  if not t.data or t.data == t.old_data.name:
    return []
  return [f"data.name={t.old_data.name}", f"data.data_dir={t.old_data.data_dir}"]


def score_transfer(cfg: ml_collections.ConfigDict, workdir: str | pathlib.Path, **info) -> dict:
  """Scores the transferred and the source model on the new and the old splits.

  Both are decoded with the transfer run's `decode` section, so the change is the models'
  alone. Writes `W2/transfer/report.json` and `report.md`; the source's scores are kept in
  `W2/transfer/source/` (computed once for each decoding).
  """
  from moe_asr.evaluation import score

  workdir = pathlib.Path(workdir)
  t = cfg.transfer
  out = workdir / "transfer"
  new_splits, old_splits = tuple(t.new_splits), tuple(t.old_splits)
  data_over = [f"data.data_dir={cfg.data.data_dir}"]
  decode = json.loads(json.dumps(cfg.decode.to_dict()))
  reports = {}
  for who, directory in (("transfer", workdir), ("source", pathlib.Path(t.source))):
    cached = out / who / "scores.json"
    if who == "source" and cached.exists():
      saved = json.loads(cached.read_text())
      if saved.get("decode") == decode:
        reports[who] = saved["scores"]
        continue

    def config(over: list[str], directory=directory):
      run_cfg = score.workdir_config(directory, over)
      run_cfg.decode = ml_collections.ConfigDict(decode)
      return run_cfg

    scores = {}
    if new_splits:
      # The source's tokenizer spells the new language with byte pieces, where it can at all.
      over = [*data_over, f"data.name={cfg.data.name}"]
      r = score.evaluate_workdir(
        directory, splits=new_splits, cfg=config(over), out_dir=out / who / "new"
      )
      scores.update(_scores(r))
    if old_splits:
      over = [f"data.name={t.old_data.name}", f"data.data_dir={t.old_data.data_dir}"]
      r = score.evaluate_workdir(
        directory, splits=old_splits, cfg=config(over), out_dir=out / who / "old"
      )
      scores.update(_scores(r))
    reports[who] = scores
    report_lib.write_atomic(cached, json.dumps({"decode": decode, "scores": scores}, indent=1))
  change = {
    split: {
      k: (None if v is None or reports["source"].get(split, {}).get(k) is None
          else v - reports["source"][split][k])
      for k, v in s.items()
    }
    for split, s in reports["transfer"].items()
  }  # fmt: skip
  result = {
    "method": t.method,
    "language": t.language,
    "init_language": t.init_language,
    "new_splits": list(new_splits),
    "old_splits": list(old_splits),
    "transfer": reports["transfer"],
    "source": reports["source"],
    "change": change,
    **info,
  }
  report_lib.write_atomic(out / "report.json", json.dumps(result, indent=1))
  report_lib.write_atomic(out / "report.md", format_markdown(result))
  return result


def format_markdown(result: Mapping) -> str:
  pct = lambda x: "-" if x is None else f"{100 * x:.1f}"
  signed = lambda x: "-" if x is None else f"{100 * x:+.1f}"
  lines = [
    f"# Transfer to {result['language']} ({result['method']})",
    "",
    f"Initialised from the nearest language: {result['init_language']}.",
  ]
  if "trained_share" in result:
    lines.append(
      f"Parameters trained: {result['params_trained']:,} of {result['params_total']:,} "
      f"({100 * result['trained_share']:.2f}%)."
    )
  if "minutes" in result:
    lines.append(f"Training time: {result['minutes']:.1f} min.")
  lines += [
    "",
    "| split | CER source | CER transfer | change | intent source | intent transfer | change |",
    "|---|---|---|---|---|---|---|",
  ]
  for split, s in result["transfer"].items():
    src, ch = result["source"].get(split, {}), result["change"].get(split, {})
    lines.append(
      f"| {split} | {pct(src.get('cer'))} | {pct(s.get('cer'))} | {signed(ch.get('cer'))} | "
      f"{pct(src.get('intent_acc'))} | {pct(s.get('intent_acc'))} | "
      f"{signed(ch.get('intent_acc'))} |"
    )
  return "\n".join(lines) + "\n"


def run_transfer(cfg: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict:
  """Trains a transfer config in `workdir`, then scores it (`score_transfer`)."""
  from moe_asr import runtime
  from moe_asr.training import train

  start = time.perf_counter()
  summary = train.train_and_evaluate(cfg, workdir)
  minutes = (time.perf_counter() - start) / 60
  if summary.get("preempted"):
    return summary
  run = runtime.build_run(cfg, workdir, for_training=False)
  share = trainable_share(cfg, run.state)
  return score_transfer(cfg, workdir, minutes=minutes, **share)
