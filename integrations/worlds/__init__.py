"""The worlds a run trains in: a policy, its reference, one scorer per objective and the prompts.

    base    the contract: ``Setup`` (what a world builds), ``Scorer`` (one objective)
    tiny/   ``--preset tiny``: a CPU-sized world built offline from files shipped here
    paper/  ``--preset mistral-7b``: the paper's models and prompt sets, and its memory plan

Each world declares its own options (``tiny/options.py``, ``paper/options.py``: the ``cfg.tiny``
and ``cfg.paper`` sections) and reads nothing else of the run. Nothing is imported here.
"""
