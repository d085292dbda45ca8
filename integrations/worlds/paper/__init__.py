"""The paper's world (``--preset mistral-7b``): Mistral-7B SFT, the beaver-7b reward and cost
models, PKU-SafeRLHF and HH-RLHF prompts (Li et al., ACL 2025, §4 and App. B).

    options  ``PaperOptions`` (the cfg.paper section)
    setup    ``build_paper_setup``, ``build_score_critics``
    models   the policy: loading, LoRA, gradient checkpointing, chat format
    scorers  the beaver score models as scorers, and critics initialised from them
    data     the prompt sets, from the hub or local files
    shapes   model shapes and parameter counts, from configs only
    memory   the per-GPU memory plan of each mode, from the shapes

Nothing is imported here.
"""
