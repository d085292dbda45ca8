"""The algorithm: multi-objective PPO on top of :mod:`mogd`, with no run infrastructure.

    options         the algorithm's options in sections (what to train, batch, optimizers,
                    rollouts, PPO, safe-rlhf, fast-rl) and ``option()``, how an option is declared
    methods         ``METHODS`` (method -> critic streams, losses, MOGD weighting), ``make_plan``
    sampling        the KV-cache sampler and the log-probs of its exact distribution
    rollout         which prompts an iteration takes (M samples each), sampling and scoring
    advantages      KL shaping, GAE or the leave-one-out group baseline, explained variance,
                    whitening, the Lagrangian mix: ``stream_advantages``
    surrogate       the clipped policy loss, the clipped value loss, the entropy
    critics         the value networks (copy / head / score; none under --advantage group)
    critic_warmup   the critic fitted to SFT rollouts before PPO (--critic-warmup, cached)
    multipliers     Safe RLHF's Lagrange multiplier, Fast RL's reward weights
    optim           MOGD's probe module (``find_module``), the warm-up cosine schedule
    accumulate      each objective's gradient accumulated over micro-batches
    gradient_signal the half-batch gradient cosine (signal/<objective>)

It reads only :mod:`mogd`, torch, transformers and the worlds' contract
(:mod:`integrations.worlds.base`); nothing is imported here.
"""
