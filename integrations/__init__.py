"""The multi-objective RLHF pipeline of the GAPO paper (Li et al., ACL 2025, arXiv 2507.01915).

Entry points: ``python integrations/rlhf_mistral.py`` (training), ``python
integrations/evaluate.py`` (evaluate / sweep / compare) and ``mogd-rlhf`` (both, from
:mod:`integrations.cli`). In a checkout the package is ``integrations``; installed, it is
``mogd.integrations`` (its modules import each other relatively, so both work).

    rlhf_mistral  the PPO loop ``train()`` and ``main()``, readable top to bottom
    config        ``Config`` (every option, declared once), ``PRESETS`` (defaults per preset)
    methods       ``METHODS`` (method -> streams, loss, weighting), ``make_plan``
    presets       the presets' builders: ``build_setup`` -> ``common.Setup``
    rollout       prompt sharding, sampling, scoring, response log-probs
    critics       value networks (copy / head / score)
    ppo           the PPO math (KL shaping, GAE, clipped losses, Lagrangian)
    runio         config.json, metrics.jsonl, checkpoints, plots, policy/ export
    dist          processes, devices, seeds and RNG state
    heldout       held-out evaluation (Table 1 columns); plan: the --dry-run memory plan
    tiny, scorers the embedded tiny preset; paper*: the Mistral-7B preset

Nothing is imported here, so ``import integrations.ppo`` stays light.
"""
