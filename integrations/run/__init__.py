"""The run around the algorithm: its configuration, its processes and devices, its files.

    config      ``Config``: every option, in sections; the flat JSON form; the config hash
    presets     ``PRESETS`` (each world's objectives and defaults); building the named world
    validate    ``validate``: a configuration checked before anything loads
    parse       ``make_config`` (keyword options), ``parse_config`` (command line, --resume)
    dry_run     ``--dry-run``: parameter counts and the per-GPU memory plan
    learner     ``Learner``: the models, sharded, and the optimizers the loop works on
    dist        processes, devices, seeds and RNG state
    sharding    precision (float32 masters, bf16 compute) and FSDP2
    checkpoint  sharded, atomic DCP checkpoints that never unpickle run files
    runio       config.json, metrics.jsonl, checkpoints of the training state, plots, policy/
    heldout     held-out evaluation (Table 1 columns), scoring rows with a world's scorers
    report      Table 1 and sweep reports: JSON, CSV, Markdown, the front plot

It reads :mod:`integrations.ppo` and the worlds, never the entry points; nothing is imported here.
"""
