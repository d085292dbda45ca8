"""``mogd-rlhf``: one command for the pipeline.

    mogd-rlhf [training options]               # = python integrations/rlhf_mistral.py
    mogd-rlhf evaluate|sweep|compare|score ... # = python integrations/evaluate.py ...

The subcommands live above the training loop (sweep and compare train runs), so the loop's
module cannot route to them without an import cycle; this module routes to both.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from . import evaluate, rlhf_mistral

SUBCOMMANDS = ("evaluate", "sweep", "compare", "score")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        return evaluate.main(argv)
    return rlhf_mistral.main(argv)
