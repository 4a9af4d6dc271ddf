"""Input pipeline: bucket shapes, sharding, exact resume, labels."""

import collections
import itertools
import math
import pathlib

import numpy as np
import pytest

from moe_asr.data import features as features_lib
from moe_asr.data import languages as langs_lib
from moe_asr.data import pipeline as pl
from moe_asr.data.tokenizer import Tokenizer

SR = 16000
VOCAB = pl.Vocabularies(intents=("play_music", "set_alarm"), slot_types=("song", "time"))
TEXTS = [
  ("play shape of you", ["en"] * 4, "play_music", [("song", "shape of you")]),
  (
    "pon la canción shape of you",
    ["es", "es", "es", "en", "en", "en"],
    "play_music",
    [("song", "shape of you")],
  ),
  ("wake me at seven", ["en"] * 4, "set_alarm", [("time", "seven")]),
  ("despiértame a las siete", ["es"] * 4, "set_alarm", [("time", "siete")]),
]


def _example(i: int, seconds: float) -> dict:
  text, words_lang, intent, slots = TEXTS[i % len(TEXTS)]
  n = int(seconds * SR)
  rng = np.random.default_rng(i)
  # Two segments when code-switched: split the audio where the languages change.
  langs = list(dict.fromkeys(words_lang))
  if len(langs) == 1:
    segments = [[0, n, langs_lib.language_index(langs[0])]]
  else:
    segments = [
      [0, n // 2, langs_lib.language_index(langs[0])],
      [n // 2, n, langs_lib.language_index(langs[1])],
    ]
  return {
    "audio": rng.integers(-3000, 3000, n).astype(np.int16),
    "text": text.encode(),  # TFDS returns bytes for text features.
    "words_lang": [w.encode() for w in words_lang],
    "segments": np.asarray(segments, np.int32),
    "language": b"mixed" if len(langs) > 1 else langs[0].encode(),
    "intent": intent.encode(),
    "slots": {"type": [t.encode() for t, _ in slots], "value": [v.encode() for _, v in slots]},
    "speaker": f"spk{i % 3}".encode(),
    "id": f"ex-{i:04d}".encode(),
    "snr_db": np.float32(np.inf),
  }


@pytest.fixture(scope="module")
def source():
  rng = np.random.default_rng(0)
  seconds = rng.uniform(0.5, 3.9, size=61)
  seconds[[5, 17]] = 5.0  # Longer than the last bucket.
  return [_example(i, s) for i, s in enumerate(seconds)]


@pytest.fixture(scope="module")
def tokenizer():
  corpus = [t for t, *_ in TEXTS] * 20 + ["a b c d e f g h i j k l m n o p q r s t u v w x y z"]
  return Tokenizer.train(corpus, vocab_size=300, languages=("en", "es"))


def _cfg(**kw):
  base = dict(buckets=((1.5, 4), (2.5, 4), (4.0, 2)), num_threads=1, prefetch=1)
  base.update(kw)
  return pl.PipelineConfig(**base)


def _pipeline(source, tokenizer, index=0, count=1, **kw):
  return pl.Pipeline(
    source, _cfg(**kw), tokenizer=tokenizer, vocab=VOCAB, process_index=index, process_count=count
  )


def test_batches_take_only_bucket_shapes(source, tokenizer):
  p = _pipeline(source, tokenizer)
  shapes = {(b.batch_size, b.max_samples, b.max_tokens, b.num_frames) for b in p.buckets}
  seen = set()
  for batch in itertools.islice(iter(p), 3 * p.batches_per_epoch):
    key = (
      batch["audio"].shape[0],
      batch["audio"].shape[1],
      batch["tokens"].shape[1],
      batch["frame_lang"].shape[1],
    )
    assert key in shapes
    seen.add(key)
    assert batch["audio"].dtype == np.int16 and batch["tokens"].dtype == np.int32
  assert len(seen) == len(shapes)


def test_example_batches_have_the_shapes_of_every_bucket(source, tokenizer):
  # What the trainer compiles for before the first batch: each process's rows of each bucket,
  # with the keys, shapes and dtypes of the batches the pipeline yields.
  p = _pipeline(source, tokenizer, index=1, count=2)
  examples = p.example_batches()
  assert len(examples) == len(p.buckets)
  seen = set()
  for batch in itertools.islice(iter(p), 2 * p.batches_per_epoch):
    b = int(batch["bucket"][0])
    seen.add(b)
    ex = examples[b]
    assert sorted(ex) == sorted(batch)
    for k in batch:
      assert (ex[k].shape, ex[k].dtype) == (batch[k].shape, batch[k].dtype), (b, k)
    assert not ex["example_mask"].any()
  assert seen == set(range(len(p.buckets)))
  assert examples[0]["audio"].shape == (p.buckets[0].batch_size // 2, p.buckets[0].max_samples)
  # A bucket that holds no example yields no batch, so it has no example batch either.
  wide = _pipeline(source, tokenizer, buckets=((1.5, 4), (2.5, 4), (4.0, 2), (6.0, 2), (9.0, 2)))
  assert wide.plan_stats["per_bucket"][3:] == [2, 0]
  assert sorted(wide.example_batches()) == [0, 1, 2, 3]


def _assert_resumes(make, skip: int, compare: int) -> None:
  """After `skip` batches, a new pipeline set to the iterator's state yields the same
  `compare` batches as the old one."""
  it = iter(make())
  for _ in range(skip):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(compare)]
  it2 = iter(make())
  it2.set_state(state)
  for want in expected:
    got = next(it2)
    assert set(got) == set(want)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])


def test_iterator_state_round_trips(source, tokenizer):
  p = _pipeline(source, tokenizer)
  # Cross an epoch boundary first.
  _assert_resumes(lambda: _pipeline(source, tokenizer), p.batches_per_epoch + 2, 5)


def test_epochs_reshuffle(source, tokenizer):
  p = _pipeline(source, tokenizer, drop_remainder=False)
  it = iter(p)
  n = p.batches_per_epoch
  epoch0 = [tuple(next(it)["index"]) for _ in range(n)]
  epoch1 = [tuple(next(it)["index"]) for _ in range(n)]
  assert epoch0 != epoch1
  assert sorted(itertools.chain(*epoch0)) == sorted(itertools.chain(*epoch1))


def test_processes_split_every_global_batch(source, tokenizer):
  single = list(itertools.islice(iter(_pipeline(source, tokenizer)), 8))
  parts = [list(itertools.islice(iter(_pipeline(source, tokenizer, i, 2)), 8)) for i in range(2)]
  for whole, a, b in zip(single, *parts, strict=True):
    assert a["audio"].shape == b["audio"].shape  # Same bucket on both processes.
    np.testing.assert_array_equal(np.concatenate([a["index"], b["index"]]), whole["index"])
    np.testing.assert_array_equal(np.concatenate([a["audio"], b["audio"]]), whole["audio"])


def test_batch_size_must_divide_processes(source, tokenizer):
  with pytest.raises(ValueError, match="not divisible by 3"):
    _pipeline(source, tokenizer, 0, 3)


def test_eval_epoch_covers_every_example_once(source, tokenizer):
  p = _pipeline(source, tokenizer, shuffle=False, drop_remainder=False, num_epochs=1)
  batches = list(iter(p))
  assert len(batches) == p.batches_per_epoch
  got = collections.Counter(int(i) for b in batches for i in b["index"][b["example_mask"]])
  long = {5, 17}
  assert set(got) == set(range(len(source))) - long
  assert all(c == 1 for c in got.values())
  for b in batches:  # Padding rows are empty and masked.
    pad = ~b["example_mask"]
    assert not b["audio_mask"][pad].any() and not b["token_mask"][pad].any()
  assert p.plan_stats["too_long"] == 2


def test_long_utterances_cut_when_configured(source, tokenizer):
  p = _pipeline(
    source, tokenizer, shuffle=False, drop_remainder=False, num_epochs=1, long_policy="cut"
  )
  batches = list(iter(p))
  rows = {int(i): (b, r) for b in batches for r, i in enumerate(b["index"]) if b["example_mask"][r]}
  assert {5, 17} <= set(rows)
  b, r = rows[5]
  assert b["audio_mask"][r].all()  # Cut to the last bucket's length.
  np.testing.assert_array_equal(b["audio"][r], source[5]["audio"][: b["audio"].shape[1]])
  assert p.stats["cut_too_long"] == 2


def test_labels(source, tokenizer):
  p = _pipeline(source, tokenizer, shuffle=False, drop_remainder=False, num_epochs=1)
  feature_cfg = features_lib.FeatureConfig()
  checked = 0
  for b in iter(p):
    for r in np.flatnonzero(b["example_mask"]):
      ex = source[int(b["index"][r])]
      text = ex["text"].decode()
      n_audio = len(ex["audio"])
      assert b["audio_mask"][r].sum() == n_audio
      np.testing.assert_array_equal(b["audio"][r, :n_audio], ex["audio"])
      tokens = b["tokens"][r][b["token_mask"][r]]
      assert tokenizer.decode(tokens.tolist()) == text
      assert b["text"][r] == text and b["id"][r] == ex["id"].decode()
      # Slot tags: one per word, on its last token (B- on a slot value's first word, I- on
      # its other words, O elsewhere); the other tokens have none (-1).
      spans = tokenizer.word_spans(tokens.tolist())
      assert len(spans) == len(text.split())
      token_word = b["token_word"][r][b["token_mask"][r]]
      for w, positions in enumerate(spans):
        assert (token_word[positions] == w).all()
      raw = b["slot_tags"][r][b["token_mask"][r]]
      last = {positions[-1] for positions in spans}
      assert all((raw[p] >= 0) == (p in last) for p in range(len(tokens)))
      tags = [VOCAB.slot_tags[raw[positions[-1]]] for positions in spans]
      expected = pl.slot_word_tags(
        text.split(),
        [(t.decode(), v.decode()) for t, v in zip(*ex["slots"].values(), strict=True)],
      )
      assert tags == expected and any(t != "O" for t in tags) == bool(ex["slots"]["type"])
      # Languages.
      words_lang = [langs_lib.language_index(w.decode()) for w in ex["words_lang"]]
      np.testing.assert_array_equal(b["words_lang"][r][: len(words_lang)], words_lang)
      runs = [x for i, x in enumerate(words_lang) if i == 0 or x != words_lang[i - 1]]
      np.testing.assert_array_equal(b["lang_runs"][r][: len(runs)], runs)
      assert b["code_switched"][r] == (len(runs) > 1)
      assert b["intent"][r] == VOCAB.intents.index(ex["intent"].decode())
      # Frame targets: first frame in the first segment's language; none past the audio.
      valid = int(features_lib.num_frames(n_audio, feature_cfg))
      assert b["frame_lang"][r][0] == ex["segments"][0, 2]
      assert b["frame_lang"][r][valid - 1] == ex["segments"][-1, 2]
      assert (b["frame_lang"][r][valid:] == pl.NO_LABEL).all()
      assert (b["frame_lang"][r][:valid] >= 0).all()
      checked += 1
  assert checked == len(source) - 2


def test_label_overflow_is_masked_and_counted(source, tokenizer):
  p = _pipeline(
    source, tokenizer, shuffle=False, drop_remainder=False, num_epochs=1, tokens_per_second=0.5
  )  # Far too few label slots for any transcript.
  batches = list(iter(p))
  assert not any(b["example_mask"].any() for b in batches)
  assert p.stats["skipped_labels_too_long"] == len(source) - 2


def test_slot_value_must_be_a_word_run():
  with pytest.raises(ValueError, match="not a word run"):
    pl.slot_word_tags("play shape of you".split(), [("song", "shape of me")])
  assert pl.slot_word_tags("a b c b".split(), [("x", "b"), ("y", "b")]) == ["O", "B-x", "O", "B-y"]


def test_length_cache(tmp_path, source):
  cache = tmp_path / "lengths.npy"
  lengths = pl.example_lengths(source, str(cache))
  np.testing.assert_array_equal(lengths, [len(ex["audio"]) for ex in source])
  np.save(cache, np.zeros(3))  # A stale cache of another size is recomputed.
  np.testing.assert_array_equal(pl.example_lengths(source, str(cache)), lengths)
  cache.write_bytes(b"garbage")  # So is a corrupt one.
  np.testing.assert_array_equal(pl.example_lengths(source, str(cache)), lengths)


# ---------------------------------------------------------------------------
# Curriculum.
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def noisy_source(source):
  """The same examples, every third one noisy (0, 5 or 10 dB SNR), the others clean."""
  out = []
  for i, ex in enumerate(source):
    ex = dict(ex)
    if i % 3 == 0:
      ex["snr_db"] = np.float32(5.0 * (i // 3 % 3))
    out.append(ex)
  return out


def _curriculum(steps=20, **kw):
  return pl.Curriculum(steps=steps, **kw)


def _plan_batches(p, n):
  return [p._plan[i] for i in range(n)]


def test_curriculum_off_is_the_plain_plan(source, tokenizer):
  # The plan of the seed as it was before curricula: `plan_epoch` per epoch, concatenated.
  buckets = pl.make_buckets(_cfg())
  bucket_ids = pl.assign_buckets(np.asarray([len(ex["audio"]) for ex in source]), buckets, "skip")
  plain = [
    batch
    for epoch in range(3)
    for batch in pl.plan_epoch(
      bucket_ids, buckets, seed=0, epoch=epoch, shuffle=True, drop_remainder=True
    )
  ]
  off = _pipeline(source, tokenizer, curriculum=pl.Curriculum(by="snr", start_fraction=0.5))
  default = _pipeline(source, tokenizer)
  for p in (off, default):
    got = _plan_batches(p, len(plain))
    assert [b for b, _ in got] == [b for b, _ in plain]
    for (_, rows), (_, want) in zip(got, plain, strict=True):
      np.testing.assert_array_equal(rows, want)
  # And so are the batches it yields.
  for a, b in zip(
    itertools.islice(iter(off), 2 * off.batches_per_epoch),
    itertools.islice(iter(default), 2 * default.batches_per_epoch),
    strict=True,
  ):
    np.testing.assert_array_equal(a["index"], b["index"])
  # With a curriculum, the batches after it are the plain plan's, place for place.
  on = _pipeline(source, None, curriculum=_curriculum(steps=7))
  assert on.batches_per_epoch == default.batches_per_epoch
  for i in range(7, len(plain)):
    assert on._plan[i][0] == plain[i][0]
    np.testing.assert_array_equal(on._plan[i][1], plain[i][1])


@pytest.mark.parametrize("by", ["length", "snr", "length+snr"])
def test_curriculum_draws_from_the_easiest_fraction(noisy_source, by):
  p = _pipeline(noisy_source, None, curriculum=_curriculum(steps=20, by=by, start_fraction=0.3))
  plan = p._plan.curriculum
  order = pl.curriculum_order(
    p.bucket_ids, by, seed=0, lengths=p.lengths, snr_db=[ex["snr_db"] for ex in noisy_source]
  )
  eligible = np.flatnonzero(p.bucket_ids >= 0)
  assert sorted(order) == eligible.tolist()
  rank = {int(x): r for r, x in enumerate(order)}
  assert plan.pool_size(0) == math.ceil(0.3 * len(eligible))
  assert p.plan_stats["curriculum_start_examples"] == plan.pool_size(0)
  sizes = [plan.pool_size(i) for i in range(20)]
  assert sizes == sorted(sizes) and sizes[-1] < len(eligible)
  for i, (b, rows) in enumerate(_plan_batches(p, 20)):
    assert len(rows) == p.buckets[b].batch_size and len(set(rows.tolist())) == len(rows)
    assert (p.bucket_ids[rows] == b).all()  # Only the existing bucket shapes.
    assert max(rank[int(x)] for x in rows) < sizes[i], (i, rows)
  if by == "length":  # Every row's duration within the easiest fraction's.
    lengths = np.sort(p.lengths[eligible])
    for i, (_, rows) in enumerate(_plan_batches(p, 20)):
      assert p.lengths[rows].max() <= lengths[sizes[i] - 1]
  if by == "snr":  # The 38 clean examples first, then by falling SNR.
    snr = np.asarray([float(noisy_source[x]["snr_db"]) for x in order])
    assert np.isinf(snr[:38]).all() and (np.diff(snr[38:]) <= 0).all()


def test_curriculum_orders_short_and_clean_first(noisy_source, tokenizer):
  seconds = lambda batch: batch["audio_mask"].sum(1)[batch["example_mask"]] / SR  # noqa: E731
  by_length = _pipeline(noisy_source, tokenizer, curriculum=_curriculum(steps=30))
  batches = list(itertools.islice(iter(by_length), 60))
  first = np.concatenate([seconds(b) for b in batches[:6]])
  late = np.concatenate([seconds(b) for b in batches[30:]])
  assert first.mean() < 0.75 * late.mean()
  assert first.max() <= np.quantile(by_length.lengths[by_length.bucket_ids >= 0] / SR, 0.5)
  # By SNR: the first batches (fraction <= 0.6, less than the clean 38 of 59) are all clean,
  # the noisy ones come later.
  by_snr = _pipeline(
    noisy_source, tokenizer, curriculum=_curriculum(steps=20, by="snr", start_fraction=0.3)
  )
  batches = list(itertools.islice(iter(by_snr), 20))
  for batch in batches[:9]:
    assert np.isinf(batch["snr_db"][batch["example_mask"]]).all()
  assert any(np.isfinite(b["snr_db"][b["example_mask"]]).any() for b in batches[9:])
  # Different seeds, different curriculum batches.
  other = _pipeline(noisy_source, None, seed=1, curriculum=_curriculum(steps=20, by="snr"))
  assert any(
    not np.array_equal(a[1], b[1])
    for a, b in zip(_plan_batches(by_snr, 20), _plan_batches(other, 20), strict=True)
  )


def test_curriculum_schedules():
  linear = pl.Curriculum(steps=100, start_fraction=0.2)
  sqrt = pl.Curriculum(steps=100, start_fraction=0.2, schedule="sqrt")
  for c in (linear, sqrt):
    values = [c.fraction(i) for i in range(120)]
    assert values[0] == pytest.approx(0.2) and values[99] < 1.0 == values[100] == values[119]
    assert values == sorted(values)
  assert linear.fraction(50) == pytest.approx(0.6)
  assert sqrt.fraction(50) == pytest.approx(math.sqrt(0.5 * (1 - 0.04) + 0.04))
  assert all(sqrt.fraction(i) >= linear.fraction(i) for i in range(100))  # Grows faster early.
  assert pl.Curriculum().fraction(0) == 1.0 and not pl.Curriculum().enabled


def test_curriculum_resumes_exactly(noisy_source, tokenizer):
  def make():
    return _pipeline(noisy_source, tokenizer, curriculum=_curriculum(steps=12, by="length+snr"))

  _assert_resumes(make, 5, 12)  # Past the curriculum's end too.


def test_curriculum_is_the_same_on_every_process(noisy_source, tokenizer):
  curriculum = _curriculum(steps=10, by="length+snr")
  single = list(itertools.islice(iter(_pipeline(noisy_source, None, curriculum=curriculum)), 12))
  parts = [
    list(itertools.islice(iter(_pipeline(noisy_source, None, i, 2, curriculum=curriculum)), 12))
    for i in range(2)
  ]
  for whole, a, b in zip(single, *parts, strict=True):
    assert a["audio"].shape == b["audio"].shape
    np.testing.assert_array_equal(np.concatenate([a["index"], b["index"]]), whole["index"])


@pytest.mark.parametrize(
  "settings, match",
  [
    (dict(by="duration"), "curriculum.by"),
    (dict(start_fraction=0.0), "start_fraction"),
    (dict(start_fraction=1.5), "start_fraction"),
    (dict(start_fraction=-0.1), "start_fraction"),
    (dict(steps=-1), "curriculum.steps"),
    (dict(schedule="cosine"), "curriculum.schedule"),
    (dict(step=100), "Unknown curriculum settings"),
  ],
)
def test_curriculum_config_errors(settings, match):
  with pytest.raises(ValueError, match=match):
    pl.PipelineConfig.from_config({"curriculum": {"steps": 10, **settings}})


def test_curriculum_config():
  import ml_collections

  cfg = ml_collections.ConfigDict(
    {"seed": 3, "curriculum": {"steps": 50, "by": "snr", "start_fraction": 1, "schedule": "sqrt"}}
  )
  pcfg = pl.PipelineConfig.from_config(cfg)
  assert pcfg.curriculum == pl.Curriculum(50, "snr", 1.0, "sqrt") and pcfg.seed == 3
  assert pl.PipelineConfig.from_config({}).curriculum == pl.Curriculum()
  with pytest.raises(ValueError, match="shuffle=True"):
    pl.PipelineConfig(shuffle=False, curriculum=pcfg.curriculum)
  pl.PipelineConfig(shuffle=False, curriculum=pl.Curriculum(by="snr"))  # Off: fine.


class _CountingSource(list):
  reads = 0

  def __getitem__(self, i):
    self.reads += 1
    return super().__getitem__(i)


def test_snr_is_read_with_the_lengths_and_cached(tmp_path, noisy_source):
  caches = {"lengths": str(tmp_path / "lengths.npy"), "snr_db": str(tmp_path / "snr.npy")}
  counting = _CountingSource(noisy_source)
  got = pl.example_columns(counting, caches)
  assert counting.reads == len(noisy_source)  # One pass for both columns.
  np.testing.assert_array_equal(got["lengths"], [len(ex["audio"]) for ex in noisy_source])
  np.testing.assert_array_equal(got["snr_db"], [ex["snr_db"] for ex in noisy_source])
  assert got["snr_db"].dtype == np.float32 and np.isinf(got["snr_db"][1])
  again = pl.example_columns(counting, caches)
  assert counting.reads == len(noisy_source)  # Both cached.
  np.testing.assert_array_equal(again["snr_db"], got["snr_db"])
  np.testing.assert_array_equal(pl.example_lengths(counting, caches["lengths"]), got["lengths"])
  # The length cache is the plain `example_lengths` one.
  np.testing.assert_array_equal(np.load(caches["lengths"]), got["lengths"])
  np.save(caches["snr_db"], np.zeros(len(noisy_source), np.int64))  # Wrong dtype: recomputed.
  np.testing.assert_array_equal(pl.example_snr(counting, caches["snr_db"]), got["snr_db"])
  assert counting.reads == 2 * len(noisy_source)
  with pytest.raises(ValueError, match="Unknown example columns"):
    pl.example_columns(counting, {"speaker": None})
  # A pipeline whose curriculum ranks by SNR reads both in one pass, or from the caches.
  fresh = _CountingSource(noisy_source)
  cfg = _cfg(curriculum=_curriculum(by="length+snr"))
  p = pl.Pipeline(fresh, cfg, process_index=0, process_count=1)
  assert fresh.reads == len(noisy_source)
  np.testing.assert_array_equal(p.snr_db, got["snr_db"])
  pl.Pipeline(
    fresh,
    cfg,
    length_cache=caches["lengths"],
    snr_cache=caches["snr_db"],
    process_index=0,
    process_count=1,
  )
  assert fresh.reads == len(noisy_source)
  # Without a curriculum by SNR, no SNR is read.
  assert pl.Pipeline(noisy_source, _cfg(), process_index=0, process_count=1).snr_db is None


def test_training_pipelines_follow_the_config_curriculum(tiny_corpus, tmp_path):
  from moe_asr import config_lib
  from moe_asr.training import inputs

  data_dir, _, _ = tiny_corpus
  cfg = config_lib.load_config(
    pathlib.Path(__file__).resolve().parents[1] / "moe_asr" / "configs" / "tiny.py",
    [
      f"data.data_dir={str(data_dir)!r}",
      "data.curriculum.steps=10",
      "data.curriculum.by='length+snr'",
    ],
  )
  run = inputs.load_run_data(cfg, tmp_path)
  train = inputs.make_pipeline(cfg, "train", run, train=True, process_index=0, process_count=1)
  assert train.cfg.curriculum == pl.Curriculum(10, "length+snr", 0.2, "linear")
  cache = data_dir / "lengths" / "moe_asr_synth_tiny_train.snr_db.npy"
  np.testing.assert_array_equal(np.load(cache), train.snr_db)
  source = inputs.split_source(cfg, "train")
  np.testing.assert_array_equal(train.snr_db, [source[i]["snr_db"] for i in range(len(source))])
  assert np.isfinite(train.snr_db).any() and np.isinf(train.snr_db).any()  # Augmented train.
  first = next(iter(train))
  assert first["example_mask"].all()
  # Evaluation never follows a curriculum (and reads no SNR for one).
  val = inputs.make_pipeline(cfg, "validation", run, train=False, process_index=0, process_count=1)
  assert not val.cfg.curriculum.enabled and val.snr_db is None
