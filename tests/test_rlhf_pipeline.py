"""The RLHF pipeline end to end on the tiny preset: every method, resume, checkpoints, bad configs.

The tiny setup (tokenizer, SFT-warmed policy, scorers) is built once into a module-scoped cache;
every run trains for a couple of PPO iterations on a few prompts with short responses.
"""

import dataclasses
import json
import math
import shutil

import pytest
import torch

from integrations import rlhf_mistral as rl

TINY_RUN = [
    "--steps", "2", "--batch-size", "4", "--minibatch-size", "4", "--max-new-tokens", "8",
    "--eval-size", "4", "--save-every", "1", "--no-progress", "--no-plots",
]  # fmt: skip


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["--method", "gapo", "--p", "-1"], "--p"),
        (["--method", "pgapo", "--preference", "0.5"], "--preference"),
        (["--method", "pgapo", "--preference", "0.5", "-0.5"], "--preference"),
        (["--method", "morlhf", "--preference", "1", "0"], "--preference"),
        (["--method", "gapo", "--preference", "0.3", "0.7"], "--preference"),
        (["--objectives"], "--objectives"),
        (["--objectives", "helpful", "truthful"], "--objectives"),
        (["--method", "ppo-s", "--objectives", "helpful"], "--objectives"),
        (["--method", "safe-rlhf", "--objectives", "harmless"], "--objectives"),
        (["--steps", "0"], "--steps"),
        (["--top-p", "1.5"], "--top-p"),
        (["--lora-r", "8"], "--lora-r"),
    ],
)
def test_bad_config_fails_before_loading(argv, option, monkeypatch, capsys):
    def no_load(cfg):
        raise AssertionError("a model was loaded for a bad configuration")

    monkeypatch.setattr(rl, "build_setup", no_load)
    assert rl.main(argv) == 2
    assert option in capsys.readouterr().err


def test_unknown_method_names_the_option(monkeypatch, capsys):
    monkeypatch.setattr(rl, "build_setup", lambda cfg: pytest.fail("model loaded"))
    with pytest.raises(SystemExit) as exc:
        rl.main(["--method", "dpo"])
    assert exc.value.code == 2
    assert "--method" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--method"):
        rl.validate(rl.Config(method="dpo"))


def test_help_lists_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit):
        rl.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for f in dataclasses.fields(rl.Config):
        if f.metadata.get("cli") is False:
            continue
        assert "--" + f.name.replace("_", "-") in text
    assert "(default: 0.05)" in text and "(default: 0.1)" in text  # β and ε of Table 2
