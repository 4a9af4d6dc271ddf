"""Evaluation: the eval step and validation, `moe-asr eval` and `tune-decoding` (score),
metrics, the report and its plots."""
