"""Defaults of the embedded spoken-command corpus (shared by every corpus config).

A corpus config is `get_config() -> ConfigDict`; `moe-asr corpus build --config NAME
--data-dir DIR` builds it as the TFDS dataset `moe_asr_synth/NAME`. Sizes are numbers of utterances per split; everything is
deterministic from `seed`.
"""

import ml_collections

# espeak-ng voice variants (espeak-ng-data/voices/!v). Train and test voices are
# disjoint so that the test splits measure unseen speakers. Variants that impose
# their own syllable timing and intonation (distorting Mandarin tones: Andrea,
# anika, antonio, pedro, robosoft*, ...) or have no voicing (whisper) are left out.
TRAIN_VARIANTS = (
  "m1",
  "m2",
  "m3",
  "m5",
  "m6",
  "m8",
  "f1",
  "f2",
  "f4",
  "klatt",
  "klatt3",
  "klatt5",
  "Alex",
  "Andy",
  "Annie",
  "Denis",
  "Gene",
  "Jacky",
  "Lee",
  "Mike",
  "adam",
  "benjamin",
  "caleb",
  "david",
  "ed",
  "iven",
  "john",
  "linda",
  "max",
  "norbert",
  "paul",
  "quincy",
  "rob",
  "robert",
  "steph",
  "travis",
)
TEST_VARIANTS = (
  "m4",
  "m7",
  "f3",
  "f5",
  "klatt2",
  "klatt4",
  "Hugo",
  "Storm",
  "belinda",
  "edward",
  "gustave",
  "marcelo",
  "michel",
  "miguel",
  "sandro",
  "steph2",
  "iven2",
  "mike2",
)


def get_config():
  c = ml_collections.ConfigDict()
  c.name = "base"  # TFDS builder config name: the dataset is `moe_asr_synth/<name>`.
  c.description = "Multilingual code-switched spoken commands (espeak-ng)."
  c.seed = 0  # Everything (text, voices, noise) is a function of this seed.

  # Languages of every split but the held-out ones, and the held-out language
  # (kept out of all other splits, for transfer experiments).
  c.languages = ("en", "es", "de", "fr", "hi", "cmn")
  c.heldout_language = "ru"
  # (matrix, embedded) pairs of intra-sentential code-switching.
  c.code_switch_pairs = (("es", "en"), ("hi", "en"), ("cmn", "en"), ("en", "es"))

  # Utterances per split.
  c.splits = ml_collections.ConfigDict(
    dict(
      train=2000,
      validation=200,
      test=300,  # Monolingual, unseen voices, clean.
      test_cs=200,  # Code-switched, unseen voices, clean.
      test_noisy=300,  # Mixed, unseen voices, noise at `noisy_snrs_db`.
      test_bias=100,  # Each contains a rare bias phrase, unseen voices.
      unlabeled=300,  # Audio for self-training (labels kept only for scoring).
      heldout_train=300,  # Held-out language, train voices.
      heldout_test=100,  # Held-out language, unseen voices.
    )
  )
  c.code_switch_fraction = 0.25  # Of train / validation / unlabeled / test_noisy.

  # Speakers: a voice = espeak variant + rate + pitch; one speaker per utterance,
  # kept across language switches.
  c.voices = ml_collections.ConfigDict(
    dict(
      train_variants=TRAIN_VARIANTS,
      test_variants=TEST_VARIANTS,
      rate_wpm=(115, 235),  # Uniform range: slow to fast speech.
      pitch=(15, 85),
      pitch_range=(20, 80),
      num_train_speakers=120,  # Distinct (variant, rate, pitch) triples.
      num_test_speakers=40,
    )
  )

  # Augmentation of the train / unlabeled splits (probabilities per utterance).
  c.augment = ml_collections.ConfigDict(
    dict(
      noise_prob=0.35,
      snr_db=(5.0, 30.0),
      noise_kinds=("white", "pink", "brown", "babble", "hum"),
      reverb_prob=0.25,
      rt60_s=(0.15, 0.7),
      speed_prob=0.3,
      speed_factors=(0.9, 1.1),
    )
  )
  c.noisy_snrs_db = (0.0, 5.0, 10.0, 20.0)  # test_noisy levels, cycled.
  c.noisy_kinds = ("white", "pink", "babble", "hum")

  # Rare entities for contextual biasing: this many per language, seen at most
  # `bias_max_train_count` times in train.
  c.bias_entities_per_language = 30
  c.bias_slot_types = ("contact", "song", "artist", "city")  # Named entities, not generic places.
  c.bias_max_train_count = 1

  # Tokenizer trained on the train text at build time (saved beside the data).
  c.tokenizer_vocab_size = 1500

  c.max_seconds = 12.0  # Longer utterances are resampled (never truncated).
  c.num_workers = 2  # Synthesis processes.
  return c
