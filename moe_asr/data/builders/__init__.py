"""TFDS builders of the project; importing this package registers them with TFDS."""

from moe_asr.data.builders import local_manifest, synth  # noqa: F401
