"""The embedded world: the synthetic language that the built-in models (bench.model.zoo) are trained on
and that the built-in dataset and tasks are drawn from."""
