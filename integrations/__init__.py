"""The multi-objective RLHF pipeline of the GAPO paper (Li et al., ACL 2025, arXiv 2507.01915).

Entry points: ``python integrations/rlhf_mistral.py`` (training) and
``python integrations/evaluate.py`` (evaluate / sweep / compare). Presets build an
:class:`integrations.common.Setup`; the PPO math lives in :mod:`integrations.ppo`. Nothing is
imported here, so ``import integrations.ppo`` stays light.
"""
