"""What this package touches of other libraries: private APIs with their versions (`compat`), and the
`transformers.TrainerCallback`s it adds (progress bar, ``metrics.jsonl``, ``train.log``)."""
