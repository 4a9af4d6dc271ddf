"""Training: the train loop, its state, losses, checkpoints, sharding and inputs, transfer,
checkpoint averaging and ensembles, and the text LM's trainer."""
