"""Self-training: the pseudo-label filter, mixtures of datasets, pseudo-labels and a round."""

import json
import math

import numpy as np
import pytest

from moe_asr import selftrain


def _constructed_validation(n=400, seed=0):
  """Confidences and character errors where errors grow as confidence falls."""
  rng = np.random.default_rng(seed)
  conf = rng.uniform(0, 1, n)
  chars = rng.integers(10, 40, n)
  errors = rng.binomial(chars, 0.6 * (1 - conf) ** 2)
  return conf, errors, chars


def test_threshold_meets_target_and_keeps_the_most():
  conf, errors, chars = _constructed_validation()
  target = 0.05
  curve = selftrain.threshold_curve(conf, errors, chars)
  assert [p["kept"] for p in curve] == list(range(1, len(conf) + 1))  # No ties here.
  t = selftrain.choose_threshold(curve, target)
  kept = conf >= t
  kept_cer = errors[kept].sum() / chars[kept].sum()
  assert kept_cer <= target
  # Every lower threshold misses the target: the chosen one keeps the most that meet it.
  for p in curve:
    if p["threshold"] < t:
      assert p["kept_cer"] > target
  assert 0.3 < kept.mean() < 0.9  # The constructed case has a non-trivial answer.
  # The kept set's CER is at most half the dropped set's (the goal for the filter).
  dropped_cer = errors[~kept].sum() / chars[~kept].sum()
  assert kept_cer <= 0.5 * dropped_cer
  point = next(p for p in curve if p["threshold"] == t)
  assert point["kept_cer"] == pytest.approx(kept_cer)
  assert point["dropped_cer"] == pytest.approx(dropped_cer)
  assert point["kept_fraction"] == pytest.approx(kept.mean())
  # Unreachable target: keep nothing.
  assert selftrain.choose_threshold(curve, -1.0) == math.inf


def test_threshold_curve_intent_accuracy_and_ties():
  conf = [0.9, 0.9, 0.5, 0.1]
  curve = selftrain.threshold_curve(conf, [0, 2, 1, 5], [10, 10, 10, 10], [1, 0, 1, math.nan])
  assert [p["kept"] for p in curve] == [2, 3, 4]  # The tied pair is kept or dropped together.
  assert curve[0]["kept_cer"] == pytest.approx(0.1)
  assert curve[0]["kept_intent_acc"] == pytest.approx(0.5)
  assert curve[1]["kept_intent_acc"] == pytest.approx(2 / 3)
  assert curve[2]["kept_intent_acc"] == pytest.approx(2 / 3)  # The nan label is not counted.
  assert curve[2]["dropped_cer"] is None


def _items(rng, language, n, conf_low, conf_high):
  text = {"en": "turn on the light", "hi": "बत्ती जलाओ", "cmn": "打开客厅的灯"}[language]
  return [
    {
      "id": f"{language}{i}",
      "text": text,
      "language": language,
      "duration_s": 2.0,
      "confidence": float(rng.uniform(conf_low, conf_high)),
    }
    for i in range(n)
  ]


def test_language_quotas_hold():
  rng = np.random.default_rng(1)
  items = _items(rng, "en", 40, 0.5, 1.0) + _items(rng, "cmn", 20, 0.4, 0.9)
  items += _items(rng, "hi", 12, 0.0, 0.3)  # A language the threshold would drop whole.
  flags, summary = selftrain.filter_items(items, selftrain.FilterConfig(threshold=0.6))
  assert summary["kept_per_language"].get("hi", 0) == 0
  flags, summary = selftrain.filter_items(
    items, selftrain.FilterConfig(threshold=0.6, min_language_fraction=0.25)
  )
  for lang, n in (("en", 40), ("cmn", 20), ("hi", 12)):
    members = [i for i, item in enumerate(items) if item["language"] == lang]
    kept = [i for i in members if flags[i]]
    assert len(kept) >= math.ceil(0.25 * n), lang
    # Above the threshold everything is kept; what the quota adds is the most confident rest.
    above = [i for i in members if items[i]["confidence"] >= 0.6]
    assert set(above) <= set(kept)
    added = sorted(set(kept) - set(above), key=lambda i: -items[i]["confidence"])
    rest = [i for i in members if i not in kept]
    if added and rest:
      assert min(items[i]["confidence"] for i in added) >= max(items[i]["confidence"] for i in rest)
  assert summary["quota_added"]["hi"] == 3
  assert summary["kept_per_language"]["hi"] == 3
  assert all(item["kept"] == flag for item, flag in zip(items, flags, strict=True))


def test_cap_keeps_most_confident_and_quotas_still_hold():
  rng = np.random.default_rng(2)
  items = _items(rng, "en", 50, 0.3, 1.0) + _items(rng, "hi", 10, 0.0, 0.2)
  flags, summary = selftrain.filter_items(
    items, selftrain.FilterConfig(max_keep_fraction=0.5, min_language_fraction=0.2)
  )
  kept_en = [items[i]["confidence"] for i in range(50) if flags[i]]
  dropped_en = [items[i]["confidence"] for i in range(50) if not flags[i]]
  assert len(kept_en) == 30 and min(kept_en) >= max(dropped_en)
  assert sum(flags[50:]) == 2  # ceil(0.2 x 10) by the quota.
  assert summary["over_cap"] == 30


def test_consistency_checks_and_skip_counts():
  items = [
    {"text": "turn on the light", "language": "en", "duration_s": 2.0, "confidence": 0.9},
    {"text": "turn on the light", "language": "hi", "duration_s": 2.0, "confidence": 0.9},
    {"text": "बत्ती jalao", "language": "hi", "duration_s": 2.0, "confidence": 0.9},
    {"text": "打开 the light", "language": "cmn", "duration_s": 2.0, "confidence": 0.9},
    {"text": "", "language": "en", "duration_s": 2.0, "confidence": 0.9},
    {"text": "turn on the light please now", "language": "en", "duration_s": 0.5, "confidence": 1},
    {"text": "on", "language": "en", "duration_s": 6.0, "confidence": 0.9},
  ]
  flags, summary = selftrain.filter_items(items, selftrain.FilterConfig())
  assert flags == [True, False, True, True, False, False, False]
  assert summary["skipped"] == {"script": 1, "empty": 1, "chars_per_second": 2}
  assert [item["reason"] for item in items] == [
    None,
    "script",
    None,
    None,
    "empty",
    "chars_per_second",
    "chars_per_second",
  ]
  assert selftrain.word_script("打开") == "Han" and selftrain.word_script("wifi") == "Latin"
  assert json.dumps(summary)  # JSON-able as written to filter.json.


# ---------------------------------------------------------------------------
# Pseudo-labels from the tiny run.
# ---------------------------------------------------------------------------

PLANTED = "planted reference words"
PLANTED_INTENT = "planted_intent"


def _planted_dataset(data_dir, tmp_path):
  """local_manifest/planted: the tiny corpus's unlabeled and validation audio with one
  planted transcript and intent for every utterance (what the model will not say)."""
  import soundfile

  from moe_asr.data import pipeline as pipeline_lib
  from moe_asr.data.builders import local_manifest

  folder = tmp_path / "planted"
  folder.mkdir()
  for split in ("unlabeled", "validation"):
    source = pipeline_lib.data_source("moe_asr_synth/tiny", split, data_dir=str(data_dir))
    lines = []
    for k in range(len(source)):
      path = folder / f"{split}_{k}.wav"
      soundfile.write(path, np.asarray(source[k]["audio"], np.int16), 16000, subtype="PCM_16")
      lines.append({"path": path.name, "text": PLANTED, "language": "en", "intent": PLANTED_INTENT})
    (folder / f"{split}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
  local_manifest.build_local_manifest(folder, tmp_path / "tfds", name="planted")
  return tmp_path / "tfds"


def test_pseudo_label_dataset_holds_hypotheses_not_references(tiny_workdir, tmp_path):
  import soundfile
  from conftest import run_cli

  from moe_asr.data import pipeline as pipeline_lib
  from moe_asr.data import text as text_lib
  from moe_asr.data.synth import augment
  from moe_asr.evaluation import score
  from moe_asr.training import inputs

  data_dir = score.workdir_config(tiny_workdir).data.data_dir
  planted_dir = _planted_dataset(data_dir, tmp_path)
  out = tmp_path / "pl"
  proc = run_cli(
    "pseudo-label",
    "--workdir",
    str(tiny_workdir),
    "--split",
    "unlabeled",
    "--data",
    "local_manifest/planted",
    "--data-dir",
    str(planted_dir),
    "--out",
    str(out),
    "--target-cer",
    "100",  # The tiny run's hypotheses are poor: a loose target keeps them all.
    "--no-script-check",
    "--max-cps",
    "1000",
    "--noise-snr",
    "5",
    "15",
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  labels = [json.loads(x) for x in (out / "labels" / "unlabeled.jsonl").read_text().splitlines()]
  assert len(labels) == 8
  # Nothing the output folder holds as text carries the planted reference or intent.
  for path in out.rglob("*"):
    if path.suffix in (".json", ".jsonl", ".txt"):
      content = path.read_text("utf-8")
      assert PLANTED not in content and PLANTED_INTENT not in content, path
  summary = json.loads((out / "filter.json").read_text())
  assert summary["dataset"] == "local_manifest/pseudo_unlabeled"
  assert summary["curve"] and (out / "filter_curve.png").stat().st_size > 0
  prov = summary["provenance"]
  assert prov["checkpoint_step"] == 4
  assert prov["decode"]["method"] == score.workdir_config(tiny_workdir).decode.method
  kept = {x["id"]: x for x in labels if x["kept"]}
  assert kept and summary["examples"] == len(kept)

  # The TFDS dataset: the model's text (normalised), language and confidences by id.
  source = pipeline_lib.data_source(
    "local_manifest/pseudo_unlabeled", "unlabeled", data_dir=summary["data_dir"]
  )
  assert len(source) == len(kept)
  for k in range(len(source)):
    ex = source[k]
    item = kept[pipeline_lib.as_str(ex["id"])]
    assert pipeline_lib.as_str(ex["text"]) == text_lib.normalize(item["text"])
    assert pipeline_lib.as_str(ex["text"]) != PLANTED
    assert pipeline_lib.as_str(ex["intent"]) in ("", item["intent"])
    # The student's audio: a noisy copy (5 to 15 dB SNR) of what the teacher decoded clean.
    clean, _ = soundfile.read(item["path"], dtype="float32")
    noisy = np.asarray(ex["audio"], np.float32) / 32768.0
    assert len(noisy) == len(clean)
    snr = augment.snr_db(clean, noisy)
    assert 4.5 <= snr <= 15.5 and snr == pytest.approx(item["student_snr_db"], abs=0.5)
  import tensorflow_datasets as tfds

  builder = tfds.builder("local_manifest/pseudo_unlabeled", data_dir=summary["data_dir"])
  stored = builder.info.metadata["pseudo_label"]
  assert stored["provenance"]["checkpoint_step"] == 4
  for uid, item in kept.items():
    assert stored["utterances"][uid]["confidence"] == pytest.approx(item["confidence"])
    assert [w[1] for w in stored["utterances"][uid]["words"]] == pytest.approx(
      [w["confidence"] for w in item["words"]]
    )

  # Read by the training pipeline like any dataset.
  cfg = score.workdir_config(
    tiny_workdir,
    ["data.name=local_manifest/pseudo_unlabeled", f"data.data_dir={summary['data_dir']}"],
  )
  data = inputs.load_run_data(cfg, tiny_workdir)
  pipe = inputs.make_pipeline(cfg, "unlabeled", data, train=False, process_index=0, process_count=1)
  ids = []
  for batch in pipe:
    mask = batch["example_mask"]
    ids += [pipeline_lib.as_str(i) for i, m in zip(batch["id"], mask, strict=True) if m]
  # Every kept utterance is in a batch, unless its (poor, long) hypothesis is longer than
  # the bucket's label length, which the pipeline counts.
  assert set(ids) <= set(kept) and len(set(ids)) == len(ids)
  assert len(ids) + pipe.stats.get("skipped_labels_too_long", 0) == len(kept), pipe.stats
  assert ids


# ---------------------------------------------------------------------------
# Mixtures of datasets.
# ---------------------------------------------------------------------------


def _mixture_pipeline(data_dir, workdir, mixture):

  from moe_asr import config_lib
  from moe_asr.training import inputs

  cfg = config_lib.load_config(
    "tiny",
    [
      f"data.data_dir={data_dir}",
      "data.buckets=((3.0,4),)",
      "data.num_threads=1",
      f"data.mixture={mixture!r}",
    ],
  )
  data = inputs.load_run_data(cfg, workdir)
  return inputs.make_pipeline(
    cfg, cfg.data.train_split, data, train=True, process_index=0, process_count=1
  )


def _batch_source(batch) -> str:
  """The split a batch came from: every example id starts with its split's name."""
  from moe_asr.data import pipeline as pipeline_lib

  ids = [pipeline_lib.as_str(i) for i, m in zip(batch["id"], batch["example_mask"], strict=True)]
  splits = {i.rsplit("-", 1)[0] for i in ids if i}
  assert len(splits) == 1, splits
  return splits.pop()


def test_mixture_from_a_command_line_override():

  from moe_asr import config_lib
  from moe_asr.training import inputs

  cfg = config_lib.load_config(
    "tiny",
    ["data.mixture=(('moe_asr_synth/tiny','train',0.7),('local_manifest/pl','x',0.3,'/d'))"],
  )
  assert inputs.mixture_entries(cfg.data.mixture) == [
    ("moe_asr_synth/tiny", "train", 0.7, ""),
    ("local_manifest/pl", "x", 0.3, "/d"),
  ]
  for bad in ((("a", "train", 0.0),), (("a", "train"),), ()):
    with pytest.raises(ValueError):
      inputs.mixture_entries(bad)


def test_mixture_proportions_over_a_long_draw(tiny_corpus, tmp_path):
  from moe_asr.training import inputs

  data_dir, _, _ = tiny_corpus
  pipe = _mixture_pipeline(data_dir, tmp_path, (("", "train", 3.0), ("", "test", 1.0)))
  assert isinstance(pipe, inputs.MixturePipeline)
  it = iter(pipe)
  draws = [_batch_source(next(it)) for _ in range(400)]
  # 400 batches at weights 3:1; grain's mix interleaves by weight, so the share of train is
  # 0.75 within 0.02 (both pipelines repeat: neither runs out).
  share = draws.count("train") / len(draws)
  assert abs(share - 0.75) <= 0.02, share
  assert set(draws) == {"train", "test"}
  # Over every window of 40 batches too, not only on average.
  for start in range(0, 400, 40):
    window = draws[start : start + 40]
    assert abs(window.count("train") / 40 - 0.75) <= 0.05


def test_mixture_iterator_state_resumes_exactly(tiny_corpus, tmp_path):
  data_dir, _, _ = tiny_corpus
  mixture = (("", "train", 1.0), ("", "test", 1.0))
  it = iter(_mixture_pipeline(data_dir, tmp_path, mixture))
  for _ in range(7):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(6)]
  resumed = iter(_mixture_pipeline(data_dir, tmp_path, mixture))  # A fresh pipeline.
  resumed.set_state(state)
  got = [next(resumed) for _ in range(6)]
  assert {_batch_source(b) for b in expected} == {"train", "test"}
  for a, b in zip(expected, got, strict=True):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)


# ---------------------------------------------------------------------------
# A round of self-training.
# ---------------------------------------------------------------------------


def test_tiny_self_training_round_end_to_end(tiny_workdir, tmp_path):
  """Teacher (the tiny run) -> pseudo-labels of `test` -> a student trained 2 steps on the
  mixture of its train split and the kept pseudo-labels, started from the teacher.

  `test` (24 utterances) rather than `unlabeled` (8): the student's training pipeline needs
  a full batch (8) of pseudo-labels within the 3 s bucket.
  """
  from conftest import run_cli

  from moe_asr.training import checkpoint as checkpoint_lib

  root = tmp_path / "st"
  proc = run_cli(
    "self-train",
    "--workdir",
    str(tiny_workdir),
    "--out",
    str(root),
    "--split",
    "test",
    "--steps",
    "2",
    "--target-cer",
    "100",
    "--keep-fractions",
    "0.9",
    "--no-script-check",
    "--min-cps",
    "0",
    "--max-cps",
    "1000",
    "--config.train.log_every=1",
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  result = json.loads((root / "selftrain.json").read_text())
  (r,) = result["rounds"]
  pseudo = r["pseudo"]
  # The curriculum's cap: the most confident 90% of the 24 (21); every other item is over
  # the cap, below the threshold chosen for the target CER, or skipped as inconsistent (an
  # empty hypothesis). How many of each depends on the tiny run's model.
  f = pseudo["filter"]
  assert f["items"] == 24 and f["kept"] == 21 and f["over_cap"] >= 1
  assert f["kept"] + f["over_cap"] + f["below_threshold"] + sum(f["skipped"].values()) == 24
  assert set(f["skipped"]) <= {"empty"}  # The only check that --min-cps 0 etc. leave on.
  assert pseudo["examples"] == 21
  labels_file = root / "round1" / "pseudo" / "labels" / "test.jsonl"
  labels = [json.loads(x) for x in labels_file.read_text().splitlines()]
  kept = sorted(x["confidence"] for x in labels if x["kept"])
  dropped = sorted(x["confidence"] for x in labels if not x["kept"])
  assert kept[0] >= dropped[-1]
  # The student: trained 2 steps from the teacher on the mixture, saved, and scored.
  student = root / "round1" / "student"
  assert r["train"]["step"] == 2 and math.isfinite(r["train"]["train/loss"])
  config = checkpoint_lib.read_config(student / "checkpoints")
  assert config["init_from"] == str(tiny_workdir.absolute() / "checkpoints")
  mixture = [tuple(m) for m in config["data"]["mixture"]]
  assert [m[:3] for m in mixture] == [
    ("moe_asr_synth/tiny", "train", 0.5),
    ("local_manifest/pseudo_round1", "test", 0.5),
  ]
  assert "val/cer" in r["train"]


def test_a_student_from_the_teacher_keeps_its_tokenizer(tiny_workdir, tmp_path):
  """A run that trained its own tokenizer (W/tokenizer.model) hands it to its students: one
  trained anew on the mixture's text would not match the parameters they start from."""
  teacher = tmp_path / "teacher"
  teacher.mkdir()
  (teacher / "checkpoints").symlink_to(tiny_workdir / "checkpoints")  # Its config, read only.
  pseudo = {"dataset": "local_manifest/p", "split_name": "test", "data_dir": str(tmp_path)}
  # The tiny run spells with its corpus's tokenizer: nothing to hand over.
  cfg = selftrain.student_config(teacher, pseudo, steps=2, pseudo_weight=0.5)
  assert cfg.data.tokenizer == ""
  (teacher / "tokenizer.model").write_bytes(b"a SentencePiece model (not read here)")
  cfg = selftrain.student_config(teacher, pseudo, steps=2, pseudo_weight=0.5)
  assert cfg.data.tokenizer == str(teacher.absolute() / "tokenizer.model")
  assert cfg.init_from == str(teacher.absolute() / "checkpoints")
  scratch = selftrain.student_config(
    teacher, pseudo, steps=2, pseudo_weight=0.5, init_from_teacher=False
  )
  assert scratch.data.tokenizer == "" and scratch.init_from == ""


def test_a_mixture_trains_its_tokenizer_on_every_dataset(tiny_corpus, tmp_path):
  """A tokenizer trained for a mixture run spells each dataset's letters as pieces: Russian
  (only in heldout_train) gets Cyrillic pieces with the mixture, byte pieces without it."""
  from moe_asr import config_lib
  from moe_asr.training import inputs

  data_dir, _, _ = tiny_corpus
  common = [f"data.data_dir={data_dir}", "data.vocab_size=600", "data.character_coverage=1.0"]
  mixture = "(('moe_asr_synth/tiny','train',1.0),('moe_asr_synth/tiny','heldout_train',1.0))"
  pieces = {}
  for name, extra in (("alone", []), ("mixture", [f"data.mixture={mixture}"])):
    cfg = config_lib.load_config("tiny", common + extra)
    workdir = tmp_path / name
    workdir.mkdir()
    tokenizer = inputs.load_run_data(cfg, workdir).tokenizer
    assert (workdir / "tokenizer.model").exists()  # Trained for the run, kept in the workdir.
    pieces[name] = {tokenizer.id_to_piece(i) for i in range(tokenizer.vocab_size)}
  cyrillic = {"д", "и", "т", "е", "в", "к", "а"}  # Letters of "включи свет" and "сделай".
  assert cyrillic <= {c for p in pieces["mixture"] for c in p}
  assert not cyrillic & {c for p in pieces["alone"] for c in p}
