"""Accuracy: perplexity under a recorded protocol, lm-eval tasks on the in-memory model, text datasets,
and the hub probe that makes them fail fast offline."""
