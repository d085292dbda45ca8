"""The multi-objective RLHF pipeline of the GAPO paper (Li et al., ACL 2025, arXiv 2507.01915).

Entry points: ``python integrations/rlhf_mistral.py`` (training), ``python
integrations/evaluate.py`` (evaluate / sweep / compare / score) and ``mogd-rlhf`` (both, from
:mod:`integrations.cli`); :class:`integrations.trl.MOGDGRPOTrainer` for TRL. In a checkout the
package is ``integrations``; installed, it is ``mogd.integrations`` (its modules import each
other relatively, so both work). docs/architecture.md draws the layers.

    rlhf_mistral  the PPO loop: ``train()`` (build, then collect -> advantages -> update -> log per
                  iteration) and ``main()``
    evaluate      the protocol: ``sweep`` and ``compare`` (they train), the subcommands' CLI
    cli           ``mogd-rlhf``: routes to the two above
    trl           ``MOGDGRPOTrainer``: GAPO inside TRL's GRPO
    testing       offline stand-ins for the paper's checkpoints and prompt files (tests, benches)
    ppo/          the algorithm: options, methods, sampling, rollouts, advantages, losses, critics,
                  multipliers, accumulation, the gradient signal
    run/          the run: Config in sections, presets, validation, parsing, the dry run, the
                  learner, processes, sharding, checkpoints, run-directory files, evaluation,
                  reports
    worlds/       what a run trains in: ``base`` (the contract), ``tiny/`` and ``paper/``

Nothing is imported here, so ``import integrations.ppo.advantages`` stays light.
"""
