"""Input pipeline: bucket shapes, sharding, exact resume, labels."""

import collections
import itertools

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


def test_iterator_state_round_trips(source, tokenizer):
  p = _pipeline(source, tokenizer)
  it = iter(p)
  for _ in range(p.batches_per_epoch + 2):  # Cross an epoch boundary first.
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(5)]
  it2 = iter(_pipeline(source, tokenizer))
  it2.set_state(state)
  for want in expected:
    got = next(it2)
    assert set(got) == set(want)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])


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
      # Slot tags: the tokens of a slot value's first word are B-, those of its other words I-.
      tags = [VOCAB.slot_tags[t] for t in b["slot_tags"][r][b["token_mask"][r]]]
      for slot_type, value in zip(ex["slots"]["type"], ex["slots"]["value"], strict=True):
        value_tokens = tokenizer.encode(value.decode())
        n = len(value_tokens)
        starts = [
          i for i in range(len(tokens) - n + 1) if tokens[i : i + n].tolist() == value_tokens
        ]
        assert starts, (text, value)
        s = starts[0]
        first = len(tokenizer.encode(value.decode().split()[0]))
        assert all(t == f"B-{slot_type.decode()}" for t in tags[s : s + first])
        assert all(t == f"I-{slot_type.decode()}" for t in tags[s + first : s + n])
      assert tags.count("O") == len(tags) - sum(t != "O" for t in tags)
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
