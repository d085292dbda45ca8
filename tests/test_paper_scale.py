"""The paper preset offline on CPU: beaver score-model loading, re-tokenising scorers,
policy loading with LoRA, prompt loaders, critics from score models and the --dry-run figures.

Every model is tiny and built here, saved in the published layouts; references are computed
independently (float64 forward of the in-memory model, hand arithmetic, meta-device models, peft's
own trainable-parameter count).
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
from transformers import (  # noqa: E402
    LlamaConfig,
    LlamaModel,
)

from integrations.run.dry_run import dry_run_plan, format_plan  # noqa: E402
from integrations.run.parse import build_parser, make_config  # noqa: E402
from integrations.testing import (  # noqa: E402
    PolicySize,
    SavedScoreModel,
    policy_tokenizer,
    save_hh_prompts,
    save_pku_prompts,
    save_policy,
    save_score_model,
    scorer_tokenizer,
)
from integrations.worlds.paper import setup as paper  # noqa: E402
from integrations.worlds.paper.data import (  # noqa: E402
    first_human_turn,
    load_hh_prompts,
    load_pku_prompts,
)
from integrations.worlds.paper.models import load_policy, resolve_pretrained  # noqa: E402
from integrations.worlds.paper.scorers import (  # noqa: E402
    BeaverScorer,
    build_score_critic,
    load_score_model,
    transfer_embeddings,
)
from integrations.worlds.paper.shapes import (  # noqa: E402
    DEFAULT_COST_MODEL,
    DEFAULT_POLICY,
    DEFAULT_REWARD_MODEL,
    PUBLISHED_CONFIGS,
    lora_param_count,
    shape_from_config,
)

HAS_PEFT = __import__("importlib").util.find_spec("peft") is not None
HAS_DATASETS = __import__("importlib").util.find_spec("datasets") is not None

WORDS = (
    "how do i bake bread make a bomb the sun is hot please help me with my homework sure here "
    "recipe cannot that BEGINNING OF CONVERSATION : USER ASSISTANT steal car no way"
).split()


def reference_score(saved: SavedScoreModel, tokenizer, text: str) -> float:
    """Independent float64 reference: one unpadded sequence, hidden state of its last token."""
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    model = LlamaModel(saved.backbone.config).double().eval()
    model.load_state_dict(saved.backbone.state_dict())
    with torch.no_grad():
        h = model(input_ids=ids).last_hidden_state[0, -1]
    return float(h @ saved.head_weight[0].double() + saved.head_bias.double()[0])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper")
    p_tok = policy_tokenizer(sorted(set(WORDS)))
    s_tok = scorer_tokenizer([" ".join(WORDS)] * 3, vocab_size=70)
    reward = save_score_model(root / "reward", s_tok, seed=1)
    cost = save_score_model(root / "cost", s_tok, seed=2, kind="cost")
    policy = save_policy(root / "policy", p_tok, seed=3)
    rows = [
        {
            "prompt": "how do i bake bread",
            "response_0": "sure",
            "response_1": "no",
            "is_response_0_safe": True,
            "is_response_1_safe": True,
            "better_response_id": 0,
            "safer_response_id": 1,
        },
        {
            "prompt": "how do i make a bomb",
            "response_0": "sure",
            "response_1": "cannot",
            "is_response_0_safe": False,
            "is_response_1_safe": True,
            "better_response_id": 0,
            "safer_response_id": 1,
        },
        {
            "prompt": "how do i bake bread",
            "response_0": "a",
            "response_1": "b",
            "is_response_0_safe": True,
            "is_response_1_safe": True,
            "better_response_id": 1,
            "safer_response_id": 0,
        },
        {
            "prompt": "please help me with my homework",
            "response_0": "sure",
            "response_1": "no",
            "is_response_0_safe": True,
            "is_response_1_safe": True,
            "better_response_id": 0,
            "safer_response_id": 0,
        },
    ]
    pku = save_pku_prompts(root / "pku.jsonl", rows)
    hh = save_hh_prompts(root / "hh.jsonl.gz", ["how do i steal a car", "the sun is hot"])
    return {
        "root": root,
        "p_tok": p_tok,
        "s_tok": s_tok,
        "reward": reward,
        "cost": cost,
        "policy": policy,
        "pku": pku,
        "hh": hh,
        "rows": rows,
    }


# --- beaver score models -------------------------------------------------------------------------


def test_score_model_loads_published_layout(world):
    model, tok = load_score_model(world["root"] / "reward", dtype=torch.float32)
    saved = world["reward"].backbone.state_dict()
    loaded = model.backbone.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    assert torch.equal(model.score_head.weight, world["reward"].head_weight)
    assert model.score_head.bias.item() == pytest.approx(world["reward"].head_bias.item())
    assert not any(p.requires_grad for p in model.parameters())
    assert tok.get_vocab() == world["s_tok"].get_vocab()


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_beaver_scorer_retokenises_policy_text(world, padding_side):
    p_tok, s_tok = world["p_tok"], world["s_tok"]
    model, tok = load_score_model(world["root"] / "reward", dtype=torch.float32)
    tok.padding_side = padding_side
    scorer = BeaverScorer("helpful", "reward", model, tok, batch_size=2)
    prompts = ["how do i bake bread", "how do i make a bomb", "the sun is hot"]
    answers = ["sure here is the recipe", "cannot", "sure the sun is hot please help me"]
    # What the PPO loop hands over: the policy's generated ids decoded to text.
    ids = [p_tok(a, add_special_tokens=False)["input_ids"] for a in answers]
    responses = [p_tok.decode(i, skip_special_tokens=True) for i in ids]
    assert responses == answers
    # The two tokenizers really differ on these texts, so re-tokenising is needed.
    assert [len(i) for i in ids] != [
        len(s_tok(a, add_special_tokens=False)["input_ids"]) for a in answers
    ]
    got = scorer.score(prompts, responses)
    assert got.dtype == torch.float32 and got.shape == (3,) and got.device.type == "cpu"
    expected = [
        reference_score(
            world["reward"],
            s_tok,
            f"BEGINNING OF CONVERSATION: USER: {p} ASSISTANT:{r}</s>",
        )
        for p, r in zip(prompts, answers, strict=True)
    ]
    torch.testing.assert_close(
        got.double(), torch.tensor(expected, dtype=torch.float64), atol=1e-4, rtol=0
    )


def test_score_model_normalisation_and_bad_checkpoints(world, tmp_path):
    plain, tok = load_score_model(world["root"] / "cost", dtype=torch.float32)
    normed_dir = tmp_path / "normed"
    shutil.copytree(world["root"] / "cost", normed_dir)
    cfg = json.loads((normed_dir / "config.json").read_text())
    cfg.update(do_normalize=True, score_type="cost", var=[4.0], mean=[3.0])
    (normed_dir / "config.json").write_text(json.dumps(cfg))
    normed, _ = load_score_model(normed_dir, dtype=torch.float32)
    batch = tok(["how do i bake bread", "the sun"], padding=True, return_tensors="pt")
    raw = plain(batch["input_ids"], batch["attention_mask"])
    # safe-rlhf normalises a cost by scale only: s / (sqrt(var) + 1e-8)
    torch.testing.assert_close(normed(batch["input_ids"], batch["attention_mask"]), raw / 2.0)

    headless = tmp_path / "headless"
    shutil.copytree(world["root"] / "cost", headless)
    index = json.loads((headless / "model.safetensors.index.json").read_text())
    for key in ("score_head.weight", "score_head.bias"):
        index["weight_map"].pop(key)
    (headless / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="score_head.weight"):
        load_score_model(headless, option="--cost-model")


def test_hub_ids_fail_clearly_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match=r"--reward-model.*hub"):
        resolve_pretrained("PKU-Alignment/beaver-7b-v1.0-reward", option="--reward-model")
    with pytest.raises(ValueError, match="--policy"):
        resolve_pretrained(str(tmp_path / "missing"), option="--policy")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="config.json"):
        resolve_pretrained(tmp_path / "empty", option="--cost-model")


def test_quantisation_needs_bitsandbytes(world):
    import importlib.util

    with pytest.raises(ValueError, match="exclusive"):
        make_config("mistral-7b", load_in_8bit=True, load_in_4bit=True)
    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes installed: the missing-package error cannot be observed")
    with pytest.raises(ValueError, match=r"--load-in-8bit.*bitsandbytes"):
        load_score_model(world["root"] / "reward", quantization="8bit")


# --- policy ------------------------------------------------------------------------------------


def test_policy_loader_bf16_checkpointing_tokenizer(world):
    model, tok, fmt = load_policy(world["root"] / "policy")
    assert model.dtype == torch.bfloat16
    checkpointing = getattr(model, "is_activation_checkpointing", None)
    assert checkpointing if checkpointing is not None else model.is_gradient_checkpointing
    assert tok.padding_side == "left" and tok.pad_token is not None
    original = world["policy"].state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(value, original[name].to(torch.bfloat16)), name
    assert all(p.requires_grad for p in model.parameters())
    # chat template applied, BOS left to the tokenizer
    assert fmt("how do i bake bread") == "USER : how do i bake bread ASSISTANT :"


@pytest.mark.skipif(not HAS_PEFT, reason="peft not installed")
def test_policy_lora_reference_is_disabled_adapters(world):
    r = 2
    model, tok, _ = load_policy(world["root"] / "policy", dtype=torch.float32, lora_r=r)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert all("lora_" in n for n, _ in trainable)
    assert all(p.dtype == torch.float32 for _, p in trainable)
    shape = shape_from_config(world["policy"].config)
    # hand count: per layer r * (in + out) over q(32->32) k(32->16) v(32->16) o(32->32)
    # gate(32->48) up(32->48) down(48->32), 2 layers
    hand = 2 * r * (64 + 48 + 48 + 64 + 80 + 80 + 80)
    assert sum(p.numel() for _, p in trainable) == hand == lora_param_count(shape, r)
    with torch.no_grad():
        for n, p in trainable:
            if "lora_B" in n:
                p.normal_()
    model.eval()
    ids = tok(["how do i bake bread", "the sun"], padding=True, return_tensors="pt")
    with torch.no_grad():
        adapted = model(**ids).logits
        with model.disable_adapter():
            base = model(**ids).logits
        expected = world["policy"](**ids).logits
    torch.testing.assert_close(base, expected)
    assert (adapted - expected).abs().max() > 1e-3


def _anon_rss() -> int:
    """This process's anonymous resident memory in bytes (not the page cache of mapped files)."""
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("RssAnon:"))
    return kib * 1024


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_replicated_policy_loads_straight_onto_the_gpu_cuda(tmp_path):
    """LoRA runs replicate the policy (DDP): ``from_pretrained`` reads it onto this rank's GPU,
    so no whole copy passes through host memory first, once per rank. Peak anonymous RSS while
    loading a 120M-parameter policy stays far below its size."""
    import threading

    p_tok = policy_tokenizer(sorted(set(WORDS)))
    size = PolicySize(hidden=1024, intermediate=4096, layers=8, heads=16, kv_heads=4)
    save_policy(tmp_path / "policy", p_tok, size, seed=0, device="cuda")  # CUDA initialised
    torch.cuda.synchronize()
    before, peak, done = _anon_rss(), [0], threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _anon_rss())
            done.wait(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        model, _, _ = load_policy(tmp_path / "policy", device="cuda", lora_r=4)
    finally:
        done.set()
        watcher.join()
    assert all(p.device.type == "cuda" for p in model.parameters())
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    assert nbytes > 200 * 2**20
    assert peak[0] - before < 0.3 * nbytes, (peak[0] - before, nbytes)


# --- prompts -----------------------------------------------------------------------------------


def test_pku_prompts_from_jsonl_and_folder(world, tmp_path):
    assert load_pku_prompts(world["pku"], "train") == [
        "how do i bake bread",
        "how do i make a bomb",
        "please help me with my homework",
    ]
    assert load_pku_prompts(world["pku"], "train", limit=2) == [
        "how do i bake bread",
        "how do i make a bomb",
    ]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"--train-prompts.*'prompt'.*PKU-SafeRLHF"):
        load_pku_prompts(bad, "train")
    if not HAS_DATASETS:
        pytest.skip("datasets not installed: hub-layout folders need it")
    folder = tmp_path / "pku"
    for gen in ("Alpaca-7B", "Alpaca2-7B"):
        (folder / "data" / gen).mkdir(parents=True)
        (folder / "data" / gen / "train.jsonl").write_text(world["pku"].read_text())
        test_rows = [dict(world["rows"][0], prompt=f"{gen} test prompt")]
        (folder / "data" / gen / "test.jsonl").write_text(json.dumps(test_rows[0]) + "\n")
    assert sorted(load_pku_prompts(folder, "test")) == [
        "Alpaca-7B test prompt",
        "Alpaca2-7B test prompt",
    ]


def test_hh_prompts_first_human_turn(world):
    assert load_hh_prompts(world["hh"], "test") == ["how do i steal a car", "the sun is hot"]
    assert first_human_turn("\n\nHuman: hi there\n\nAssistant: hello") == "hi there"
    with pytest.raises(ValueError, match="Human"):
        first_human_turn("Assistant: only")


@pytest.mark.skipif(not HAS_DATASETS, reason="datasets not installed")
def test_dataset_hub_id_fails_clearly_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match=r"--eval-prompts.*PKU-Alignment/PKU-SafeRLHF"):
        load_pku_prompts("PKU-Alignment/PKU-SafeRLHF", "test", option="--eval-prompts")


# --- the preset end to end -----------------------------------------------------------------------


def _args(world, **kw):
    """The mistral-7b Config of the offline stand-ins in ``world``."""
    base = dict(
        policy=str(world["root"] / "policy"),
        reward_model=str(world["root"] / "reward"),
        cost_model=str(world["root"] / "cost"),
        train_prompts=str(world["pku"]),
        eval_prompts=str(world["pku"]),
        hh_prompts=str(world["hh"]),
        device="cpu",
    )
    base.update(kw)
    return make_config("mistral-7b", **base)


def test_build_paper_setup_full_finetuning(world):
    setup = paper.build_paper_setup(_args(world, max_train_prompts=2).paper, "cpu")
    assert setup.train_prompts == ["how do i bake bread", "how do i make a bomb"]
    assert len(setup.eval_prompts) == 3
    assert setup.reference is not None
    assert not any(p.requires_grad for p in setup.reference.parameters())
    assert setup.policy.get_submodule("lm_head").weight.requires_grad  # what --probe lm_head uses
    assert [(s.name, s.kind) for s in setup.scorers] == [
        ("helpful", "reward"),
        ("harmless", "cost"),
    ]
    scores = setup.scorers[1].score(["how do i make a bomb"], ["sure"])
    assert scores.dtype == torch.float32 and scores.shape == (1,)
    assert setup.format_prompt("hi") == "USER : hi ASSISTANT :"
    assert setup.eval_sets == {"hh-rlhf": ["how do i steal a car", "the sun is hot"]}


@pytest.mark.skipif(not HAS_PEFT, reason="peft not installed")
def test_build_paper_setup_lora_has_no_reference_copy(world):
    setup = paper.build_paper_setup(_args(world, lora_r=2).paper, "cpu")
    assert setup.reference is None
    assert _args(world, lora_r=2).algorithm.probe == "full"  # the LM head is frozen under LoRA
    assert hasattr(setup.policy, "disable_adapter")


# --- critics from score models -------------------------------------------------------------------


def test_transfer_embeddings_rows(world):
    p_tok, s_tok = world["p_tok"], world["s_tok"]
    weight = torch.randn(len(s_tok), 8, dtype=torch.float64)
    rows = transfer_embeddings(weight, s_tok, p_tok)
    s_vocab = s_tok.get_vocab()
    assert rows.shape == (len(p_tok), 8)
    shared = composite = 0
    for token, idx in p_tok.get_vocab().items():
        if token in ("<s>", "</s>", "<pad>", "<unk>"):
            expected = weight[s_vocab[token]]
        elif token in s_vocab:
            expected, shared = weight[s_vocab[token]], shared + 1
        else:
            pieces = s_tok(token, add_special_tokens=False)["input_ids"]
            expected, composite = weight[pieces].mean(0), composite + 1
        torch.testing.assert_close(rows[idx], expected)
    assert shared > 0 and composite > 0  # both branches were exercised
    torch.testing.assert_close(transfer_embeddings(weight, s_tok, s_tok), weight)


def test_score_critic_matches_score_model_token_scores(world):
    s_tok = world["s_tok"]
    critic = build_score_critic(world["root"] / "reward", s_tok, dtype=torch.float32)
    model, _ = load_score_model(world["root"] / "reward", dtype=torch.float32)
    batch = s_tok(["how do i bake bread", "the sun"], padding=True, return_tensors="pt")
    critic.eval()
    with torch.no_grad():
        values = critic(batch["input_ids"], batch["attention_mask"])
        expected = model.token_scores(batch["input_ids"], batch["attention_mask"])[..., 0]
    torch.testing.assert_close(values, expected)
    critic.train()
    p_tok = world["p_tok"]
    critic = build_score_critic(world["root"] / "cost", p_tok, dtype=torch.float32)
    ids = p_tok(["how do i make a bomb"], return_tensors="pt")
    values = critic(ids["input_ids"], ids["attention_mask"])
    assert values.shape == ids["input_ids"].shape and values.dtype == torch.float32
    values.sum().backward()
    assert critic.value_head.weight.grad is not None
    assert critic.backbone.get_input_embeddings().weight.grad is not None
    if HAS_PEFT:  # LoRA critic: adapters + the float32 value head train, nothing else
        critic = build_score_critic(world["root"] / "cost", p_tok, dtype=torch.float32, lora_r=2)
        trainable = sum(p.numel() for p in critic.parameters() if p.requires_grad)
        shape = shape_from_config(world["reward"].backbone.config)
        # 2 layers x r=2 x (q,k,v,o: 32+32 each; gate, up: 32+64; down: 64+32) + head 32 + 1
        assert trainable == 2 * 2 * (4 * 64 + 3 * 96) + 33 == lora_param_count(shape, 2) + 33


# --- dry run ---------------------------------------------------------------------------------------

MISTRAL_7B = (
    7_241_732_096  # 32000*4096*2 + 32*(2*4096*4096 + 2*4096*1024 + 3*4096*14336 + 2*4096) + 4096
)
BEAVER_7B = 6_607_351_809  # 32001*4096 + 32*(4*4096*4096 + 3*4096*11008 + 2*4096) + 4096 + 4096 + 1


def test_published_parameter_counts_by_hand_and_meta_models():
    mistral = shape_from_config(PUBLISHED_CONFIGS[DEFAULT_POLICY])
    beaver = shape_from_config(PUBLISHED_CONFIGS[DEFAULT_REWARD_MODEL])
    hand_mistral = (
        32000 * 4096 * 2
        + 32 * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096)
        + 4096
    )
    hand_beaver = 32001 * 4096 + 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096) + 4096 + 4097
    assert mistral.causal_lm_params() == hand_mistral == MISTRAL_7B
    assert beaver.score_model_params() == hand_beaver == BEAVER_7B
    with torch.device("meta"):
        meta = LlamaModel(
            LlamaConfig(
                **{
                    k: v
                    for k, v in PUBLISHED_CONFIGS[DEFAULT_COST_MODEL].items()
                    if k not in ("score_dim", "score_bias")
                }
            )
        )
    assert sum(p.numel() for p in meta.parameters()) + 4097 == BEAVER_7B
    # LoRA r=16 on all seven maps: 32 * 16 * (8192 + 2*5120 + 8192 + 2*18432 + 18432)
    assert lora_param_count(mistral, 16) == 32 * 16 * 81920 == 41_943_040


def test_tiny_dry_run_counts_match_real_models(world):
    text = format_plan(dry_run_plan(_args(world, world_size=2)))
    n_policy = sum(p.numel() for p in world["policy"].parameters())
    n_score = sum(p.numel() for p in world["reward"].backbone.parameters()) + 32 + 1
    assert f"parameters {n_policy:,}; trainable {n_policy:,}" in text
    assert f"parameters {n_score:,}" in text


def test_paper_options_parse_and_belong_to_their_preset():
    parse = build_parser().parse_args
    given = vars(parse(["--preset", "mistral-7b", "--lora-r", "8", "--load-in-4bit"]))
    cfg = make_config(**given, critic_init="score")
    paper = cfg.paper
    assert paper.lora_r == 8 and paper.load_in_4bit and cfg.algorithm.critic_init == "score"
    assert cfg.algorithm.probe == "full"  # LoRA freezes the LM head: full mode over the adapters
    assert paper.policy == "HuggingFaceH4/mistral-7b-sft-beta"
    assert paper.reward_model == "PKU-Alignment/beaver-7b-v1.0-reward"
    assert paper.cost_model == "PKU-Alignment/beaver-7b-v1.0-cost"
    # a default per preset (at the 8 GPUs of Table 2, where it fits)
    assert make_config("mistral-7b", world_size=8).algorithm.critic_init == "score"
    assert make_config("tiny").algorithm.critic_init == "copy"
    with pytest.raises(SystemExit):
        parse(["--critic-init", "random"])
    with pytest.raises(ValueError, match="--lora-r is an option of --preset mistral-7b"):
        make_config("tiny", lora_r=8)
    with pytest.raises(ValueError, match="--critic-init score"):
        make_config("tiny", critic_init="score")


# --- the preset end to end through the training loop ---------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not HAS_PEFT, reason="peft not installed")
def test_paper_preset_lora_run_writes_adapter_and_merged_policy(world, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from integrations import rlhf_mistral

    out = tmp_path / "run"
    argv = [
        "--preset", "mistral-7b", "--policy", str(world["root"] / "policy"),
        "--reward-model", str(world["root"] / "reward"), "--cost-model", str(world["root"] / "cost"),
        "--train-prompts", str(world["pku"]), "--eval-prompts", str(world["pku"]),
        "--hh-prompts", str(world["hh"]), "--device", "cpu", "--lora-r", "2", "--lr", "0.05",
        "--steps", "1", "--batch-size", "2", "--grad-accum", "1", "--minibatch-size", "2",
        "--max-new-tokens", "4", "--eval-size", "2", "--eval-samples", "1", "--no-progress",
        "--no-plots", "--out", str(out),
    ]  # fmt: skip
    assert rlhf_mistral.main(argv) == 0
    assert json.loads((out / "config.json").read_text())["probe"] == "full"
    result = json.loads((out / "eval.json").read_text())  # both columns of Table 1
    assert result["prompts"] == 2 and set(result["objectives"]) == {"helpful", "harmless"}
    hh = result["columns"]["hh-rlhf"]
    assert hh["prompts"] == 2 and set(hh["objectives"]) == {"helpful", "harmless"}
    merged = AutoModelForCausalLM.from_pretrained(out / "policy")
    base = AutoModelForCausalLM.from_pretrained(world["root"] / "policy")
    assert all(p.dtype == torch.bfloat16 for p in merged.parameters())  # the policy's weights
    unmerged = PeftModel.from_pretrained(base, out / "adapter")  # peft's adapter forward
    ids = world["p_tok"](["how do i bake bread"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = unmerged(input_ids=ids).logits.float()
        got = merged(input_ids=ids).logits.float()
        with unmerged.disable_adapter():
            original = unmerged(input_ids=ids).logits.float()
    torch.testing.assert_close(got, expected, atol=0.1, rtol=0.05)  # bf16 merge rounding
    assert not torch.equal(got, original)  # the adapter moved the policy
