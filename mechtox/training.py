"""A hooked training loop for HookedTransformer: DPO, SFT, probe-guided SFT, probe-ranked DPO, SAP.

Objectives may read (and differentiate through) activations at hook points: the probe-SFT
loss adds the probe's score of the policy's OWN activations at the probe's hook, attached
with a scoped ``model.hooks``. The loop has fp32 or bf16 autocast, gradient accumulation,
AdamW (fused on CUDA) or RMSprop, linear warm-up, gradient clipping, evaluation every N steps,
early stopping on the validation loss, atomic checkpoints and exact resume (weights, optimizer,
schedule, data order and metrics), seeds, a progress bar and metrics in JSONL.

DPO follows TRL: ``loss = -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))`` on summed
completion log-probs, masks from the completion positions (never from the pad id), metric
names ``rewards/chosen``, ``rewards/rejected``, ``rewards/margins``, ``rewards/accuracies``.
Reference log-probs are computed once, up front, with the initial weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from mechtox import _io
from mechtox.data import PreferencePairs, encode, pad_id
from mechtox.errors import MechtoxError
from mechtox.train_config import (  # noqa: F401 (re-exported: they live in a module that imports nothing heavy)
    TrainConfig,
    lee_et_al_config,
    seed_everything,
)

# ----------------------------------------------------------------------------- batches


@dataclass(frozen=True)
class SeqBatch:
    """Right-padded sequences with an attention mask and a mask of the positions whose NEXT
    token is a completion token (the labels). ``start`` is the first such position of any row:
    the logits before it are never needed."""

    tokens: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    label_mask: Int[Tensor, "batch pos"]
    start: int = 0

    def to(self, device) -> SeqBatch:
        return SeqBatch(to_device(self.tokens, device), to_device(self.attention_mask, device),
                        to_device(self.label_mask, device), self.start)


def to_device(t: Tensor, device) -> Tensor:
    """``t.to(device)`` without making the host wait for the GPU work already queued (which a
    copy from pageable memory does): to a CUDA device through pinned memory, asynchronously. The
    caching host allocator keeps the pinned copy alive until the transfer has run."""
    if torch.device(device).type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def build_sequences(model: HookedTransformer, prompts: Sequence[str], completions: Sequence[str],
                    max_prompt_tokens: int, max_completion_tokens: int) -> list[tuple[list[int], int]]:
    """``(prompt + completion ids, prompt length)`` per example (prompt: last tokens; completion: first).
    Where both would not fit the model's context, the prompt keeps fewer of its last tokens (at
    least one), then the completion fewer of its first."""
    n_ctx = model.cfg.n_ctx
    p_ids = encode(model, prompts, max_prompt_tokens, truncate="left") if any(prompts) else [[] for _ in prompts]
    if any(len(p) == 0 for p in p_ids) and model.tokenizer.bos_token_id is not None:
        # an empty prompt: start from BOS so the first completion token is predicted
        p_ids = [p if p else [model.tokenizer.bos_token_id] for p in p_ids]
    c_ids = encode(model, completions, max_completion_tokens, prepend_bos=False)
    out = []
    for p, c in zip(p_ids, c_ids, strict=True):
        if not c:
            raise MechtoxError("an empty completion cannot be trained on")
        if len(p) + len(c) > n_ctx:  # longer than the position embedding: an IndexError inside the model
            c = c[: n_ctx - min(len(p), 1)]
            p = p[len(p) - (n_ctx - len(c)):]
        out.append((p + c, len(p)))
    return out


def collate(seqs: Sequence[tuple[list[int], int]], pid: int) -> SeqBatch:
    n = max(len(s) for s, _ in seqs)
    toks = torch.full((len(seqs), n), pid, dtype=torch.long)
    att = torch.zeros((len(seqs), n), dtype=torch.long)
    lab = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, (s, p) in enumerate(seqs):
        toks[i, : len(s)] = torch.tensor(s)
        att[i, : len(s)] = 1
        lab[i, p - 1: len(s) - 1] = 1  # position t predicts token t+1, a completion token
    return SeqBatch(toks, att, lab, max(0, min(p for _, p in seqs) - 1))


class _TokenLogp(torch.autograd.Function):
    """``log_softmax(logits)[target]`` in float32 without materialising the log-softmax: the
    forward keeps a logsumexp per row, the backward writes ``onehot - softmax`` into one new
    tensor (autograd's log_softmax + gather allocate three of vocabulary size)."""

    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor) -> Tensor:
        x = logits.float()
        lse = torch.logsumexp(x, -1)
        ctx.save_for_backward(logits, target, lse)
        return x.gather(-1, target.unsqueeze(-1)).squeeze(-1) - lse

    @staticmethod
    def backward(ctx, g: Tensor):
        logits, target, lse = ctx.saved_tensors
        grad = torch.exp(logits.float() - lse.unsqueeze(-1))
        grad.mul_(-g.unsqueeze(-1))
        grad.scatter_add_(-1, target.unsqueeze(-1), g.unsqueeze(-1))
        return grad.to(logits.dtype), None


def token_logps(logits: Float[Tensor, "... vocab"], target: Int[Tensor, "..."]) -> Float[Tensor, "..."]:
    """Log-probability of each ``target`` token under ``logits`` (float32)."""
    return _TokenLogp.apply(logits, target)


def completion_logits(model, batch: SeqBatch) -> Float[Tensor, "batch kept vocab"]:
    """The logits at positions ``batch.start`` onwards (the only ones a completion token is
    predicted from) when the model's call takes ``logits_to_keep`` (the hf backend: the LM head
    runs on those positions only); a HookedTransformer's logits at every position otherwise."""
    if getattr(model, "keeps_logits", False):
        return model(batch.tokens, attention_mask=batch.attention_mask, logits_to_keep=batch.tokens.shape[1] - batch.start)
    return model(batch.tokens, attention_mask=batch.attention_mask)


def completion_token_logps(logits: Float[Tensor, "batch kept vocab"], batch: SeqBatch) -> Float[Tensor, "batch kept_minus_one"]:
    """Log p(next token) at each position of ``logits`` but the last, which cover the LAST
    ``logits.shape[1]`` positions of the batch (all of them, or from ``batch.start`` on), times
    the label mask."""
    offset = batch.tokens.shape[1] - logits.shape[1]
    if offset > batch.start:
        raise ValueError(f"the logits start at position {offset}, after the first completion label ({batch.start})")
    return token_logps(logits[:, :-1], batch.tokens[:, offset + 1:]) * batch.label_mask[:, offset:-1]


def sequence_logps(logits: Float[Tensor, "batch kept vocab"], batch: SeqBatch) -> Float[Tensor, " batch"]:
    """Sum over completion tokens of log p(token | prefix) (``logits``: all positions or the
    last ones, as ``completion_logits`` gives)."""
    return completion_token_logps(logits, batch).sum(-1)


def pair_logps(model: HookedTransformer, chosen: Sequence[tuple[list[int], int]], rejected: Sequence[tuple[list[int], int]],
               pid: int, dtype: str = "float32") -> tuple[Tensor, Tensor]:
    """Summed completion log-probs of the chosen and of the rejected sequences, in one forward
    pass over both (``dtype``: autocast precision)."""
    batch = collate(list(chosen) + list(rejected), pid).to(model.cfg.device)
    with _autocast(model, dtype):
        logits = completion_logits(model, batch)
    lp = sequence_logps(logits, batch)
    return lp[: len(chosen)], lp[len(chosen):]


def dpo_loss(chosen_logps: Tensor, rejected_logps: Tensor, ref_chosen_logps: Tensor, ref_rejected_logps: Tensor,
             beta: float) -> tuple[Tensor, dict[str, Tensor]]:
    """TRL's sigmoid DPO loss and metrics (names as TRL logs them)."""
    chosen_rewards = beta * (chosen_logps - ref_chosen_logps)
    rejected_rewards = beta * (rejected_logps - ref_rejected_logps)
    logits = chosen_rewards - rejected_rewards
    loss = -F.logsigmoid(logits).mean()
    cr, rr = chosen_rewards.detach(), rejected_rewards.detach()
    metrics = {  # 0-d tensors: the loop reads them from the device once per step
        "rewards/chosen": cr.mean(),
        "rewards/rejected": rr.mean(),
        "rewards/margins": (cr - rr).mean(),
        "rewards/accuracies": (cr > rr).float().mean(),
        "logps/chosen": chosen_logps.detach().mean(),
        "logps/rejected": rejected_logps.detach().mean(),
    }
    return loss, metrics


# ----------------------------------------------------------------------------- objectives


class DPOObjective:
    """DPO on preference pairs; reference log-probs precomputed with the initial weights."""

    name = "dpo"
    hook_names: tuple[str, ...] = ()
    """TransformerLens hooks the loss reads or writes (the hf backend must map them)"""

    def __init__(self, model: HookedTransformer, pairs: PreferencePairs, cfg: TrainConfig):
        self.cfg = cfg
        self.pid = pad_id(model)
        self.chosen = build_sequences(model, pairs.prompt, pairs.chosen, cfg.max_prompt_tokens, cfg.max_completion_tokens)
        self.rejected = build_sequences(model, pairs.prompt, pairs.rejected, cfg.max_prompt_tokens, cfg.max_completion_tokens)
        # pairs whose two sides are the same tokens as trained (after the cut to max_completion_tokens): no gradient
        self.n_identical = sum(c == r for c, r in zip(self.chosen, self.rejected, strict=True))
        if self.n_identical == len(self.chosen):
            raise MechtoxError(f"every pair's chosen and rejected are the same tokens (completions cut to "
                               f"{cfg.max_completion_tokens} tokens): DPO has nothing to learn from them")
        self.ref_chosen = torch.zeros(len(pairs))
        self.ref_rejected = torch.zeros(len(pairs))
        self.n_tokens = sum(len(s) for s, _ in self.chosen + self.rejected)

    def __len__(self) -> int:
        return len(self.chosen)

    def example_keys(self) -> list:
        """Each pair as its tokens: equal keys are the same pair to the loss (kept on one side of the split)."""
        return [(tuple(c[0]), c[1], tuple(r[0]), r[1]) for c, r in zip(self.chosen, self.rejected, strict=True)]

    @torch.no_grad()
    def prepare(self, model: HookedTransformer, progress: bool) -> None:
        """Reference log-probs of every pair, once (the model holds its initial weights)."""
        bs = self.cfg.batch_size
        for s in tqdm(range(0, len(self), bs), desc="reference log-probs", disable=not progress, leave=False):
            idx = list(range(s, min(s + bs, len(self))))
            c, r = self._logps(model, idx)
            self.ref_chosen[idx] = c.float().cpu()
            self.ref_rejected[idx] = r.float().cpu()

    def _logps(self, model, idx) -> tuple[Tensor, Tensor]:
        return pair_logps(model, [self.chosen[i] for i in idx], [self.rejected[i] for i in idx], self.pid, self.cfg.dtype)

    def loss(self, model, idx) -> tuple[Tensor, dict[str, Tensor]]:
        c, r = self._logps(model, idx)
        dev = c.device
        ii = torch.as_tensor(idx)
        return dpo_loss(c, r, to_device(self.ref_chosen[ii], dev), to_device(self.ref_rejected[ii], dev), self.cfg.beta)

    def tokens(self, idx) -> int:
        return sum(len(self.chosen[i][0]) + len(self.rejected[i][0]) for i in idx)


class SFTObjective:
    """Language-modelling loss on the completions (the targets) of prompt / target examples."""

    name = "sft"
    hook_names: tuple[str, ...] = ()

    def __init__(self, model: HookedTransformer, prompts: Sequence[str], targets: Sequence[str], cfg: TrainConfig):
        self.cfg = cfg
        self.pid = pad_id(model)
        self.seqs = build_sequences(model, prompts, targets, cfg.max_prompt_tokens, cfg.max_completion_tokens)
        self.n_tokens = sum(len(s) for s, _ in self.seqs)

    def __len__(self) -> int:
        return len(self.seqs)

    def example_keys(self) -> list:
        """Each example as its tokens: equal keys are the same example to the loss."""
        return [(tuple(t), start) for t, start in self.seqs]

    def prepare(self, model, progress) -> None:
        return None

    def _batch(self, model, idx) -> SeqBatch:
        return collate([self.seqs[i] for i in idx], self.pid).to(model.cfg.device)

    def lm_loss(self, model, batch: SeqBatch, fwd_hooks=()) -> Tensor:
        """Mean next-token loss over the target tokens, with ``fwd_hooks`` attached."""
        with _autocast(model, self.cfg.dtype), model.hooks(fwd_hooks=list(fwd_hooks)):
            logits = completion_logits(model, batch)
        return -completion_token_logps(logits, batch).sum() / batch.label_mask.sum()

    def loss(self, model, idx) -> tuple[Tensor, dict[str, Tensor]]:
        lm = self.lm_loss(model, self._batch(model, idx))
        return lm, {"lm_loss": lm.detach()}

    def tokens(self, idx) -> int:
        return sum(len(self.seqs[i][0]) for i in idx)


class ProbeSFTObjective(SFTObjective):
    """LM loss on non-toxic targets + ``lambda * mean P(toxic)`` of the policy's own activations
    at each probe's hook (averaged over the probes trained against)."""

    name = "sft-probe"

    def __init__(self, model: HookedTransformer, prompts: Sequence[str], targets: Sequence[str], probes: Sequence,
                 cfg: TrainConfig):
        if not probes:
            raise MechtoxError("sft-probe needs at least one probe to train against")
        super().__init__(model, prompts, targets, cfg)
        self.modules = [p.module().to(model.cfg.device) for p in probes]
        self.hook_names = tuple(dict.fromkeys(m.hook_name for m in self.modules))

    def loss(self, model, idx) -> tuple[Tensor, dict[str, Tensor]]:
        batch = self._batch(model, idx)
        store: dict[str, Tensor] = {}

        def grab(act, hook):
            store[hook.name] = act
            return act

        lm = self.lm_loss(model, batch, [(m.hook_name, grab) for m in self.modules])
        # the probe reads the whole text as it was trained (mean over real tokens)
        scores = torch.stack([mod.pooled(store[mod.hook_name].float(), batch.attention_mask) for mod in self.modules])
        probe = scores.mean()
        loss = lm + self.cfg.probe_lambda * probe
        return loss, {"lm_loss": lm.detach(), "probe_score": probe.detach()}


def safety_loss(safe_logps: Tensor, harmful_logps: Tensor, temperature: float = 1.0) -> Tensor:
    """SAP's contrastive safety loss ``mean(-log sigmoid((log p(safe|x) - log p(harmful|x)) / T))``."""
    return -F.logsigmoid((safe_logps - harmful_logps) / temperature).mean()


@torch.no_grad()
def pair_margins(model: HookedTransformer, pairs: PreferencePairs, batch_size: int = 8, max_prompt_tokens: int = 32,
                 max_completion_tokens: int = 32) -> Float[Tensor, " n_pairs"]:
    """``log p(chosen|prompt) - log p(rejected|prompt)`` per pair (summed completion log-probs).
    With chosen = safe, ``-log sigmoid(margin / T)`` is SAP's safety loss and ``margin > 0`` the
    share of pairs the model prefers the safe way."""
    pid = pad_id(model)
    c = build_sequences(model, pairs.prompt, pairs.chosen, max_prompt_tokens, max_completion_tokens)
    r = build_sequences(model, pairs.prompt, pairs.rejected, max_prompt_tokens, max_completion_tokens)
    out = []
    for s in range(0, len(c), batch_size):
        lp_c, lp_r = pair_logps(model, c[s: s + batch_size], r[s: s + batch_size], pid)
        out.append((lp_c - lp_r).float().cpu())
    return torch.cat(out)


def sap_layers(spec: str, n_layers: int) -> list[int]:
    """``'auto'`` (10% and 28% of the depth) or comma-separated block indices."""
    if spec == "auto":
        return sorted({min(n_layers - 1, round(0.1 * n_layers)), min(n_layers - 1, round(0.28 * n_layers))})
    try:
        layers = sorted({int(x) for x in spec.split(",") if x.strip()})
    except ValueError:
        raise MechtoxError(f"sap_layers must be 'auto' or comma-separated block numbers, not {spec!r}") from None
    bad = [x for x in layers if not 0 <= x < n_layers]
    if not layers or bad:
        raise MechtoxError(f"sap_layers {spec!r}: the model has blocks 0-{n_layers - 1}")
    return layers


class SAPObjective(SFTObjective):
    """Safety-aware probing (Wu et al. 2025) while fine-tuning on a benign task.

    Each training step, for a batch of task examples and a batch of safety pairs:

    1. the harmful direction: the gradient ``g`` of the safety loss on the pairs with respect to
       the weights, normalised over all of them; the weights move to ``theta + rho * |theta| * g/|g|``
       (the model a harmful fine-tuning step would produce);
    2. the safety-aware probe: under those perturbed weights, the gradient of the TASK loss with
       respect to a vector added to the residual stream after the chosen blocks; the vector is
       one signed step along it, ``eps * median|h| * sign(grad)`` per block (median over the real
       tokens of the batch) (the direction in which
       the harmful perturbation hurts the task most). The weights are restored exactly;
    3. the returned loss is the task loss with that vector added: the task gradient is taken
       through the probed hidden states.

    Without gradients (validation) the loss is the plain task loss. The metrics add the safety
    loss of the batch (before the step) and the size of the vectors.
    """

    name = "sap"

    def __init__(self, model: HookedTransformer, prompts: Sequence[str], targets: Sequence[str],
                 safety: PreferencePairs, cfg: TrainConfig):
        super().__init__(model, prompts, targets, cfg)
        if len(safety) < 1:
            raise MechtoxError("sap needs safety pairs (chosen = safe, rejected = harmful)")
        self.safe = build_sequences(model, safety.prompt, safety.chosen, cfg.max_prompt_tokens, cfg.max_completion_tokens)
        self.harmful = build_sequences(model, safety.prompt, safety.rejected, cfg.max_prompt_tokens,
                                       cfg.max_completion_tokens)
        self.layers = sap_layers(cfg.sap_layers, model.cfg.n_layers)
        self.hooks = [f"blocks.{layer}.hook_resid_post" for layer in self.layers]
        self.hook_names = tuple(self.hooks)

    def safety_batch(self, idx) -> list[int]:
        """The safety pairs that go with task examples ``idx`` (a fixed function of idx, so a
        resumed run sees the same ones)."""
        return [(i * 7919 + 13) % len(self.safe) for i in idx]

    def safety_loss(self, model, sidx) -> Tensor:
        safe, harmful = pair_logps(model, [self.safe[i] for i in sidx], [self.harmful[i] for i in sidx], self.pid,
                                   self.cfg.dtype)
        return safety_loss(safe, harmful, self.cfg.sap_temperature)

    def probe_vectors(self, model, batch: SeqBatch, sidx) -> tuple[dict[str, Tensor], Tensor]:
        """Steps 1-2: perturb the weights along the harmful gradient, find the vectors, restore."""
        params = [p for p in model.parameters() if p.requires_grad]
        s_loss = self.safety_loss(model, sidx)
        grads = torch.autograd.grad(s_loss, params, allow_unused=True)
        pairs = [(p, g) for p, g in zip(params, grads, strict=True) if g is not None]
        g_norm = torch.sqrt(sum((g.float() ** 2).sum() for _, g in pairs))
        w_norm = torch.sqrt(sum((p.detach().float() ** 2).sum() for p, _ in pairs))
        saved = [p.detach().clone() for p, _ in pairs]
        scale = self.cfg.sap_rho * w_norm / (g_norm + 1e-12)
        vecs = {h: torch.zeros(model.cfg.d_model, device=batch.tokens.device, requires_grad=True) for h in self.hooks}
        mags: dict[str, Tensor] = {}

        real = batch.attention_mask.bool()

        def add(act, hook):
            mags[hook.name] = act.detach()[real].abs().float().median()  # over real tokens, not padding
            return act + vecs[hook.name].to(act.dtype)

        try:
            with torch.no_grad():
                for p, g in pairs:
                    p.add_((scale * g).to(p.dtype))
            task = self.lm_loss(model, batch, [(h, add) for h in self.hooks])
            v_grads = torch.autograd.grad(task, [vecs[h] for h in self.hooks])
        finally:
            with torch.no_grad():
                for (p, _), w in zip(pairs, saved, strict=True):
                    p.copy_(w)
        out = {h: (self.cfg.sap_eps * mags[h] * torch.sign(g)).detach() for h, g in zip(self.hooks, v_grads, strict=True)}
        return out, s_loss.detach()

    def loss(self, model, idx) -> tuple[Tensor, dict[str, Tensor]]:
        batch = self._batch(model, idx)
        if not torch.is_grad_enabled():
            lm = self.lm_loss(model, batch)
            return lm, {"lm_loss": lm.detach()}
        vecs, s_loss = self.probe_vectors(model, batch, self.safety_batch(idx))
        lm = self.lm_loss(model, batch, [(h, lambda act, hook: act + vecs[hook.name].to(act.dtype)) for h in self.hooks])
        v_norm = torch.stack([v.norm() for v in vecs.values()]).mean()
        return lm, {"lm_loss": lm.detach(), "safety_loss": s_loss, "sap_vector_norm": v_norm}

    def tokens(self, idx) -> int:
        s = self.safety_batch(idx)
        return super().tokens(idx) * 2 + sum(len(self.safe[i][0]) + len(self.harmful[i][0]) for i in s)


def rank_pairs_by_probe(pairs: PreferencePairs, scorer) -> tuple[PreferencePairs, int]:
    """Probe-based DPO data: in each pair, chosen = the completion the probe scores less toxic.
    Returns the re-ranked pairs and how many were swapped."""
    sc = np.asarray(scorer(pairs.chosen))
    sr = np.asarray(scorer(pairs.rejected))
    swap = sc > sr
    chosen = [r if s else c for c, r, s in zip(pairs.chosen, pairs.rejected, swap, strict=True)]
    rejected = [c if s else r for c, r, s in zip(pairs.chosen, pairs.rejected, swap, strict=True)]
    extra = [{**(e or {}), "probe_chosen": float(min(a, b)), "probe_rejected": float(max(a, b))}
             for e, a, b in zip(pairs.extra or [{}] * len(pairs), sc, sr, strict=True)]
    return PreferencePairs(list(pairs.prompt), chosen, rejected, pairs.source + " (ranked by probe)", extra), int(swap.sum())


# ----------------------------------------------------------------------------- the loop


def _autocast(model, dtype: str):
    if dtype == "bfloat16":
        return torch.autocast(device_type=torch.device(model.cfg.device).type, dtype=torch.bfloat16)
    import contextlib

    return contextlib.nullcontext()


def _optimizer(params: list, cfg: TrainConfig, device):
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    # fused: one kernel over all tensors; on this project's 2-core CPU 0.16 s per update of SmolLM2's
    # 163M weights against 1.1 s for the default (foreach) implementation
    fused = torch.device(device).type in ("cuda", "cpu")
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)


def _lr_lambda(warmup: int):
    return lambda step: min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0


def _order(n: int, seed: int, start: int, count: int) -> list[int]:
    """Examples ``start .. start+count`` of the stream of seeded per-epoch permutations."""
    out = []
    pos = start
    while len(out) < count:
        epoch, off = divmod(pos, n)
        perm = np.random.default_rng(seed + 7919 * epoch).permutation(n)
        take = min(count - len(out), n - off)
        out.extend(int(i) for i in perm[off: off + take])
        pos += take
    return out


@dataclass
class TrainResult:
    history: list[dict[str, Any]]
    steps: int
    best_val: float
    stopped_early: bool
    seconds: float
    tokens_per_second: float
    out_dir: Path | None  # None: trained without checkpoints
    val_history: list[dict[str, Any]] = field(default_factory=list)
    backend: str = "hooked"
    backend_reason: str = ""
    trainable_params: int = 0

    def __repr__(self) -> str:
        early = ", stopped early" if self.stopped_early else ""
        return (f"TrainResult({self.steps} steps in {self.seconds:.1f} s, {self.tokens_per_second:,.0f} tokens/s on the "
                f"{self.backend} backend, {self.trainable_params:,} trainable parameters; "
                + (f"best validation loss {self.best_val:.4g}" if math.isfinite(self.best_val) else "no validation examples")
                + f"{early}; {self.out_dir or 'no checkpoints'})")


def read_saved(path: Path, read: Callable[[Path], Any], out: Path) -> Any:
    """``read(path)`` for a file of an interrupted run's saved state, or a one-line error saying it
    is missing or damaged (a disk that filled, a copy cut short) and what to do."""
    try:
        return read(path)
    except Exception as e:  # noqa: BLE001 (json, safetensors, zip and pickle readers raise many kinds)
        first = (str(e).splitlines() or [""])[0].split(". ")[0][:120]
        raise MechtoxError(f"cannot resume {out}: state/{path.name} is missing or damaged ({type(e).__name__}: {first}); "
                           f"delete {out} to start over, or choose another --out") from None


def _restore(out: Path | None, cfg: TrainConfig, model: HookedTransformer, objective,
             base_print: list[float], data_print: str) -> tuple[int, list, list, float, int]:
    """Weights, reference log-probs and loop state of an interrupted run in ``out/state``. A LoRA
    run keeps its base weights: only the adapters are restored (after the backend is built)."""
    assert out is not None  # _run_dir: no resume without a folder
    state_dir = out / "state"
    if not (state_dir / "trainer.json").is_file():
        raise MechtoxError(f"nothing to resume in {out}: no checkpoint (state/trainer.json); run without --resume")
    meta = read_saved(state_dir / "trainer.json", lambda f: json.loads(f.read_text()), out)
    loop_keys = ("config", "step", "history", "val_history", "best_val", "bad_evals")
    if not isinstance(meta, dict) or any(k not in meta for k in loop_keys):
        raise MechtoxError(f"cannot resume {out}: state/trainer.json lacks the loop state ({', '.join(loop_keys)}); "
                           f"delete {out} to start over, or choose another --out")
    saved_cfg = meta["config"]
    # settings that do not change the trajectory up to the checkpoint may differ
    free = {"max_steps", "eval_every", "checkpoint_every", "patience", "compile"}
    diff = [k for k in saved_cfg if k not in free and saved_cfg[k] != dataclasses.asdict(cfg).get(k)]
    if diff:
        raise MechtoxError(f"cannot resume {out}: the config differs in {diff}; use the same settings")
    if meta.get("data", data_print) != data_print:  # runs saved before the data were hashed have none
        raise MechtoxError(f"cannot resume {out}: it trained on other data (the pairs or examples changed since it "
                           "started); resume with the data it started with, or choose another --out")
    from safetensors.torch import load_file

    if cfg.lora_r:
        saved = meta.get("base_model")
        if saved is not None and (len(saved) > len(base_print)  # saved by an older mechtox: its first entries
                                  or not np.allclose(saved, base_print[:len(saved)], rtol=1e-9, atol=1e-6)):
            raise MechtoxError(f"cannot resume {out}: it trained LoRA adapters on another base model; resume with the "
                               "model it started from")
    else:
        model.load_state_dict(read_saved(state_dir / "weights.safetensors",
                                         lambda f: load_file(str(f), device=str(model.cfg.device)), out), strict=False)
    ref = (read_saved(state_dir / "reference.pt", lambda f: torch.load(f, map_location="cpu"), out)
           if (state_dir / "reference.pt").is_file() else None)
    if ref is not None:
        objective.ref_chosen, objective.ref_rejected = ref["chosen"], ref["rejected"]
    return meta["step"], meta["history"], meta["val_history"], meta["best_val"], meta["bad_evals"]


def _accumulate(fwd_model, objective, ex: list[int], cfg: TrainConfig, opt, step: int, params: list | None = None,
                world: int = 1) -> tuple[Tensor, list[str]]:
    """Zero the gradients, then forward and backward ``cfg.grad_accum`` micro-batches of ``ex``:
    the mean loss, the mean metrics and the token count stacked in one device tensor (read by
    ``_read_step`` with the gradient norm: one host-device synchronisation per step, after the
    backward), and their names. Under data parallel (``world`` > 1) the gradients and metrics
    are averaged and the tokens summed over the ranks."""
    from mechtox import distributed

    opt.zero_grad(set_to_none=True)
    sums: dict[str, Tensor] = {}
    n_tok = 0
    for a in range(cfg.grad_accum):
        idx = ex[a * cfg.batch_size: (a + 1) * cfg.batch_size]
        loss, metrics = objective.loss(fwd_model, idx)
        (loss / cfg.grad_accum).backward()
        for k, v in {"loss": loss.detach(), **metrics}.items():
            v = torch.as_tensor(v, device=loss.device).float() / cfg.grad_accum
            sums[k] = sums[k] + v if k in sums else v
        n_tok += objective.tokens(idx)
    keys = list(sums)
    # torch.full: a fill on the device; torch.tensor(value, device=...) would be a blocking copy
    stacked = torch.stack([sums[k] for k in keys] + [torch.full((), float(n_tok), device=sums["loss"].device)])
    if world > 1:
        if not cfg.fsdp:  # FSDP's reduce-scatter has averaged them already
            distributed.average_gradients(params or [], world)
        stacked = distributed.all_sum(stacked, world)
        stacked[:-1] /= world
    return stacked, keys


def _read_step(stacked: Tensor, keys: list[str], gnorm: Tensor, step: int) -> tuple[float, dict[str, float], int, float]:
    """(loss, metrics, tokens, gradient norm) of a step from the device, in one transfer; an
    error before the update when the loss is not finite."""
    *values, n_all, norm = torch.cat([stacked.float(), gnorm.detach().float().reshape(1)]).tolist()
    agg = dict(zip(keys, values, strict=True))
    total = agg.pop("loss")
    if not math.isfinite(total):
        raise MechtoxError(f"the loss became {total} at step {step}; lower the learning rate")
    return total, agg, int(n_all), norm


def _as_objective(model: HookedTransformer, objective: Any, cfg: TrainConfig) -> Any:
    """``objective`` itself, or for :class:`PreferencePairs` the DPO objective on them (what a
    notebook passes first); anything else is a one-line error naming what to pass."""
    if isinstance(objective, PreferencePairs):
        if cfg.objective != "dpo":
            raise MechtoxError(f"PreferencePairs train the dpo objective; for {cfg.objective!r} pass "
                               "make_objective(model, cfg, pairs, probes=..., task=...)")
        if len(objective) >= 2:
            objective = DPOObjective(model, objective, cfg)
    elif not (hasattr(objective, "prepare") and hasattr(objective, "__len__")):
        raise MechtoxError(f"train needs an objective (make_objective(model, cfg, pairs, ...), DPOObjective, "
                           f"SFTObjective, ...) or PreferencePairs, not a {type(objective).__name__}")
    if len(objective) < 2:
        raise MechtoxError("need at least 2 training examples")
    return objective


def _say_setup(cfg: TrainConfig, world: int, backend: str, why: str) -> None:
    if world > 1:
        print(f"data parallel: {world} processes, {cfg.batch_size * cfg.grad_accum} examples each per step", flush=True)
    print(f"training backend: {backend} ({why})", flush=True)


def _restore_adapters(out: Path | None, fwd_model, model: HookedTransformer) -> None:
    """The LoRA adapters of an interrupted run, into the built backend."""
    from safetensors.torch import load_file

    assert out is not None  # _run_dir: no resume without a folder
    fwd_model.load_adapters(read_saved(out / "state" / "adapter.safetensors",
                                       lambda f: load_file(str(f), device=str(model.cfg.device)), out))


def _run_dir(out_dir: str | os.PathLike[str] | None, resume: bool) -> Path | None:
    if out_dir is None:
        if resume:
            raise MechtoxError("resume=True continues a run from its folder: give the out_dir of the run to continue")
        return None
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise MechtoxError(f"{out} is a file; train writes a folder there: give a new or existing folder")
    return out


def train(model: HookedTransformer, objective, cfg: TrainConfig, out_dir: str | os.PathLike[str] | None,
          resume: bool = False, progress: bool = True, val_idx: Sequence[int] | None = None,
          train_idx: Sequence[int] | None = None, stop_after: int | None = None) -> TrainResult:
    """Train ``model`` in place on ``objective`` (an objective, or :class:`PreferencePairs` for
    DPO); checkpoints and metrics go to ``out_dir`` (``None``: none are written, as for a quick
    experiment in a notebook; the run cannot be resumed).

    ``resume=True`` continues from ``out_dir/state`` to the same weights as an uninterrupted
    run. ``stop_after`` ends the run after that many steps of THIS call (used to simulate an
    interruption in tests).
    """
    objective = _as_objective(model, objective, cfg)
    out = _run_dir(out_dir, resume)
    state_dir = out / "state" if out is not None else None
    train_idx, val_idx = _split_objective(objective, cfg, train_idx, val_idx)
    torch.manual_seed(cfg.seed)
    from mechtox import distributed
    from mechtox.hf_backend import choose_backend
    from mechtox.models import architecture_parameters

    backend, why = choose_backend(cfg.backend, model.cfg, getattr(objective, "hook_names", ()), lora=cfg.lora_r > 0)
    rank, world = distributed.setup(str(model.cfg.device))
    _check_fsdp(cfg, world, backend, why)
    progress = progress and rank == 0
    if progress:
        _say_setup(cfg, world, backend, why)
    trainable = set(architecture_parameters(model))  # not the zero biases TransformerLens adds (Llama)
    was = {name: p.requires_grad for name, p in model.named_parameters()}
    for name, p in model.named_parameters():
        p.requires_grad_(name in trainable and backend == "hooked")

    step, history, val_history = 0, [], []
    best_val, bad_evals = float("inf"), 0
    base_print, data_print = _fingerprint(model), _data_fingerprint(objective)
    if resume:
        step, history, val_history, best_val, bad_evals = _restore(out, cfg, model, objective, base_print, data_print)
    elif state_dir is not None and (state_dir / "trainer.json").is_file():
        raise MechtoxError(f"{out} already holds a training run; pass --resume to continue it or choose another --out")
    fwd_model = _step_model(model, backend, cfg)
    if resume and cfg.lora_r:
        _restore_adapters(out, fwd_model, model)
    room = _room_for_checkpoints(out, model, [p for p in fwd_model.parameters() if p.requires_grad], cfg, rank, world)
    room(None)  # before the reference passes and the first step
    if not resume:
        fwd_model.eval()
        objective.prepare(fwd_model, progress)  # every rank the same passes, before sharding
    if cfg.fsdp:
        fwd_model.shard()
    fwd_model.train()
    params = [p for p in fwd_model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in params)
    if progress:
        _announce(fwd_model, cfg, n_trainable, world)
    opt, sched = _optimizer_and_schedule(fwd_model, params, cfg, model.cfg.device, state_dir if resume else None)

    def evaluate_val() -> float:
        # under FSDP every rank runs as many passes as the one with the most examples
        lockstep = -(-len(val_idx) // world) if cfg.fsdp else 0
        return _validation_loss(fwd_model, objective, val_idx[rank::world], cfg.batch_size, world, lockstep)

    def checkpoint() -> None:
        _write_back(fwd_model, model)
        loop = {"step": step, "history": history, "val_history": val_history, "best_val": best_val,
                "bad_evals": bad_evals, "config": dataclasses.asdict(cfg), "base_model": base_print,
                "data": data_print}
        opt_state = fwd_model.optimizer_state(opt) if cfg.fsdp else opt.state_dict()  # FSDP: gathered by all
        room(step)
        if rank == 0:  # one writer; the others wait so that a resume finds the checkpoint complete
            _save_state(out, model, fwd_model, objective, opt_state, sched, loop, lora=cfg.lora_r > 0)
        distributed.barrier(world)

    eff = cfg.batch_size * cfg.grad_accum
    t0, tokens_done = time.perf_counter(), 0
    stopped_early = False
    this_call = 0
    bar = tqdm(total=cfg.max_steps, initial=step, desc=f"train {objective.name}", disable=not progress)
    while step < cfg.max_steps:
        t_step = time.perf_counter()
        ex = [train_idx[i] for i in _order(len(train_idx), cfg.seed, step * eff * world, eff * world)]
        ex = ex[rank * eff: (rank + 1) * eff]  # this rank's share of the global batch
        stacked, keys = _accumulate(fwd_model, objective, ex, cfg, opt, step, params, world)
        gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.clip if cfg.clip > 0 else float("inf"))
        gnorm = gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm  # FSDP: a DTensor
        total, agg, n_tok, norm = _read_step(stacked, keys, gnorm, step)
        tokens_done += n_tok
        opt.step()
        sched.step()
        step += 1
        this_call += 1
        rec = {"step": step, "loss": total, "grad_norm": norm, "lr": sched.get_last_lr()[0], **agg,
               "tokens": n_tok, "seconds": time.perf_counter() - t_step}
        if cfg.eval_every and step % cfg.eval_every == 0 or step == cfg.max_steps:
            v = evaluate_val()
            rec["val_loss"] = v
            val_history.append({"step": step, "val_loss": v})
            if v < best_val - 1e-6:
                best_val, bad_evals = v, 0
            else:
                bad_evals += 1
        history.append(rec)
        bar.update(1)
        bar.set_postfix(loss=f"{total:.4f}", **({"val": f"{rec['val_loss']:.4f}"} if "val_loss" in rec else {}))
        if cfg.patience and bad_evals >= cfg.patience:
            stopped_early = True
        if out is not None and (step % cfg.checkpoint_every == 0 or step == cfg.max_steps or stopped_early):
            checkpoint()
        if stopped_early or (stop_after is not None and this_call >= stop_after):
            break
    bar.close()
    _write_back(fwd_model, model)
    for name, p in model.named_parameters():
        p.requires_grad_(was[name] and name in trainable)
    model.eval()
    secs = time.perf_counter() - t0
    return TrainResult(history, step, best_val, stopped_early, secs, tokens_done / secs if secs > 0 else 0.0, out,
                       val_history, backend, why, n_trainable)


def _split_objective(objective: Any, cfg: TrainConfig, train_idx: Sequence[int] | None,
                     val_idx: Sequence[int] | None) -> tuple[list[int], list[int]]:
    """:func:`_split` of ``objective``'s examples, keeping its repeats together (a note, from rank 0
    even without progress bars, says how many there are: a problem of the data)."""
    keys = objective.example_keys() if hasattr(objective, "example_keys") else None
    tr, va = _split(len(objective), cfg, train_idx, val_idx, keys)
    n_repeats = len(objective) - len(set(keys)) if keys is not None else 0
    if n_repeats and int(os.environ.get("RANK", "0")) == 0:
        print(f"note: {n_repeats} of the {len(objective)} examples repeat others (the same tokens); each set of "
              f"repeats is on one side of the train / validation split ({len(va)} validation examples)", flush=True)
    return tr, va


def _split(n: int, cfg: TrainConfig, train_idx: Sequence[int] | None,
           val_idx: Sequence[int] | None, keys: Sequence[Any] | None = None) -> tuple[list[int], list[int]]:
    """The training and validation examples: those given (one of them given: the other is the rest),
    else a seeded ``cfg.val_fraction`` split that keeps examples with equal ``keys`` (the same
    tokens) on one side, so that a repeated example is never validated on after training on it;
    early stopping needs some validation examples."""
    if train_idx is None and val_idx is None and keys is not None and len(set(keys)) < n:
        tr, va = _grouped_split(n, cfg, list(keys))
    else:
        tr, va = _split_examples(n, cfg, train_idx, val_idx)
    if cfg.patience and not va:  # every validation loss NaN: it had stopped after `patience` evaluations
        raise MechtoxError(f"patience {cfg.patience} stops on the validation loss, and there are no validation "
                           "examples (val_fraction 0, or val_idx empty); give some, or patience 0")
    return tr, va


def _grouped_split(n: int, cfg: TrainConfig, keys: list) -> tuple[list[int], list[int]]:
    """A seeded split of about ``cfg.val_fraction`` of the examples that puts every group of equal
    keys on one side: groups in the order of a random permutation of the examples, each taken into
    validation while it fits in the share (the first one even if it does not), never all of them."""
    perm = np.random.default_rng(cfg.seed).permutation(n)
    n_val = max(1, int(round(cfg.val_fraction * n))) if cfg.val_fraction > 0 else 0
    members: dict[Any, list[int]] = {}
    for i, k in enumerate(keys):
        members.setdefault(k, []).append(i)
    val: set[int] = set()
    for i in perm:
        group = members[keys[int(i)]]
        if len(val) >= n_val:
            break
        if group[0] not in val and (len(val) + len(group) <= n_val or (not val and len(group) < n)):
            val.update(group)
    return [i for i in range(n) if i not in val], sorted(val)


def _split_examples(n: int, cfg: TrainConfig, train_idx: Sequence[int] | None,
                    val_idx: Sequence[int] | None) -> tuple[list[int], list[int]]:
    if train_idx is None and val_idx is None:
        perm = np.random.default_rng(cfg.seed).permutation(n)
        n_val = max(1, int(round(cfg.val_fraction * n))) if cfg.val_fraction > 0 else 0
        return sorted(perm[n_val:].tolist()), sorted(perm[:n_val].tolist())
    tr = None if train_idx is None else [int(i) for i in train_idx]
    va = None if val_idx is None else [int(i) for i in val_idx]
    if any(not 0 <= i < n for i in (tr or []) + (va or [])):
        raise MechtoxError(f"train_idx and val_idx must be example numbers in [0, {n})")
    tr = sorted(set(range(n)) - set(va or [])) if tr is None else tr
    va = sorted(set(range(n)) - set(tr)) if va is None else va
    if not tr or set(tr) & set(va):
        raise MechtoxError("train_idx must be non-empty and share no example with val_idx")
    return tr, va


def _check_fsdp(cfg: TrainConfig, world: int, backend: str, why: str) -> None:
    if cfg.fsdp and (world < 2 or backend != "hf"):
        raise MechtoxError("--fsdp shards the model over processes on the hf backend: "
                           + ("launch with torchrun --nproc_per_node N (N >= 2)" if world < 2 else why))


def _announce(fwd_model, cfg: TrainConfig, n_trainable: int, world: int) -> None:
    if cfg.fsdp:
        print(f"FSDP: weights, gradients and optimizer state sharded over {world} processes", flush=True)
    total = sum(p.numel() for p in fwd_model.parameters())
    print(f"trainable parameters: {n_trainable:,} of {total:,}"
          f"{f' (LoRA r {cfg.lora_r} on {cfg.lora_targets})' if cfg.lora_r else ''}", flush=True)
    hint = compile_hint(cfg, str(next(fwd_model.parameters()).device))
    if hint:
        print(hint, flush=True)


def compile_hint(cfg: TrainConfig, device: str) -> str | None:
    """A line suggesting ``--compile`` for an eager run of many steps on a GPU, else None. On an
    H100 the eager step of SmolLM2 took 160 ms against 43 compiled (docs/results.md); compiling
    costs about a minute, so below a few hundred steps it does not pay."""
    if cfg.compile or torch.device(device).type != "cuda" or cfg.max_steps < 500:
        return None
    return (f"hint: {cfg.max_steps} eager steps on a GPU; --compile ran this loop 3.7x faster on an H100 "
            f"(SmolLM2-135M, after about a minute of compiling)")


def _optimizer_and_schedule(fwd_model, params: list, cfg: TrainConfig, device, state_dir: Path | None):
    """The optimizer and learning-rate schedule, restored from ``state_dir`` when resuming (under
    FSDP each rank takes its shard of the saved optimizer state)."""
    opt = _optimizer(params, cfg, device)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.warmup_steps))
    if state_dir is not None:
        out = state_dir.parent
        saved = read_saved(state_dir / "optimizer.pt", lambda f: torch.load(f, map_location=device, weights_only=False), out)
        if cfg.fsdp:
            fwd_model.load_optimizer_state(opt, saved)
        else:
            opt.load_state_dict(saved)
        sched.load_state_dict(read_saved(state_dir / "scheduler.pt", lambda f: torch.load(f, weights_only=False), out))
    return opt, sched


def _validation_loss(fwd_model, objective, mine: list[int], batch_size: int, world: int, lockstep: int = 0) -> float:
    """Mean loss over the validation examples; each rank passes its share (``mine``) and the sums
    are reduced. ``lockstep``: the largest share; a rank with fewer examples runs passes on its
    first one (or example 0) that count for nothing, so every rank runs as many (FSDP's gathers)."""
    from mechtox import distributed

    if not mine and world == 1:
        return float("nan")
    fwd_model.eval()
    dev = fwd_model.cfg.device
    tot = torch.zeros(2, dtype=torch.float64, device=dev)
    with torch.no_grad():
        for s in range(0, max(len(mine), lockstep), batch_size):
            idx = mine[s: s + batch_size]
            filler = not idx
            loss, _ = objective.loss(fwd_model, idx or mine[:1] or [0])
            if filler:
                continue
            tot += torch.stack([loss.detach().double() * len(idx), torch.tensor(float(len(idx)), device=dev,
                                                                                dtype=torch.float64)])
    fwd_model.train()
    tot = distributed.all_sum(tot, world)
    return float(tot[0] / tot[1]) if float(tot[1]) > 0 else float("nan")


def checkpoint_bytes(model: HookedTransformer, trained: Sequence[Tensor], cfg: TrainConfig) -> int:
    """About how many bytes one resumable checkpoint of ``train`` takes on disk: every weight, the
    optimizer's running moments of the ``trained`` parameters (AdamW two, RMSprop one) and, for
    LoRA, the adapters; with the files' per-tensor records and the small files beside them.
    SmolLM2-135M fully trained: 0.68 GB of weights and 1.30 GB of AdamW state."""
    sd = model.state_dict()
    weights = sum(v.numel() * v.element_size() for v in sd.values()) + 128 * len(sd)
    trained_bytes = sum(p.numel() * p.element_size() for p in trained)
    moments = 1 if cfg.optimizer == "rmsprop" else 2
    optimizer = moments * trained_bytes + 320 * (1 + moments) * len(trained)  # and a step count per tensor
    return weights + optimizer + (trained_bytes if cfg.lora_r else 0) + 16 * 1024


def _room_for_checkpoints(out: Path | None, model: HookedTransformer, trained: list[Tensor], cfg: TrainConfig, rank: int,
                          world: int):
    """``room(step)``: raise before the checkpoint of ``step`` (``None``: before training) when the
    disk has no room for it (no checkpoints, ``out`` None: never)."""
    need = checkpoint_bytes(model, trained, cfg)

    def room(step: int | None) -> None:
        if out is None:
            return
        if step is None:
            what, todo = "a training checkpoint", "free some space or choose another --out"
        else:
            what = f"the checkpoint of step {step}"
            todo = "the last checkpoint written is kept: free some space, then continue with --resume"
        _check_disk(out, need, what, todo, rank, world, model.cfg.device)

    return room


def _check_disk(out: Path, need: int, what: str, todo: str, rank: int = 0, world: int = 1, device="cpu") -> None:
    """A one-line error, before anything is written, when the disk holding ``out`` has less free
    space than a checkpoint takes (plus 5% and 64 MB): a full disk otherwise surfaces as torch's
    "unexpected pos" deep inside ``torch.save``. A checkpoint replaces the last one only once it
    is complete, so each write needs its whole size free. Rank 0, the writer, looks; under
    torchrun every rank learns its answer, so that all stop together."""
    from mechtox import distributed

    free = 0
    if rank == 0:
        probe = out
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        free = shutil.disk_usage(probe).free
    want = need * 1.05 + 64 * 2**20
    short = torch.tensor([float(rank == 0 and free < want)])
    if world > 1:
        short = distributed.all_sum(short.to(device), world)
    if float(short) > 0:
        raise MechtoxError(f"not enough disk space for {what} in {out}: it needs about {want / 1e9:.2f} GB "
                           f"(weights and optimizer state) and " + (f"{free / 1e9:.2f} GB are" if rank == 0 else
                                                                   "rank 0 found less") + f" free; {todo}")


def _save_state(out: Path | None, model: HookedTransformer, fwd_model, objective, opt_state: dict, sched, loop: dict,
                lora: bool) -> None:
    """The resumable checkpoint ``out/state`` (weights, optimizer, schedule, reference log-probs,
    LoRA adapters, loop state), written atomically, and ``out/metrics.jsonl``."""
    assert out is not None  # train: no checkpoints without a folder
    from safetensors.torch import save_file

    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}

    def write(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        save_file(sd, str(tmp / "weights.safetensors"))
        torch.save(opt_state, tmp / "optimizer.pt")
        if lora:
            save_file({k: v.cpu().contiguous() for k, v in fwd_model.adapter_state_dict().items()},
                      str(tmp / "adapter.safetensors"))
        torch.save(sched.state_dict(), tmp / "scheduler.pt")
        if hasattr(objective, "ref_chosen"):
            torch.save({"chosen": objective.ref_chosen, "rejected": objective.ref_rejected}, tmp / "reference.pt")
        (tmp / "trainer.json").write_text(json.dumps(loop, default=float))

    _io.write_with(out / "state", write)
    _io.write_text(out / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in loop["history"]))


def _step_model(model: HookedTransformer, backend: str, cfg: TrainConfig):
    """What the objectives call: the HookedTransformer itself, or the hf backend built from it
    (with LoRA adapters when ``cfg.lora_r``)."""
    if backend == "hf":
        from mechtox.hf_backend import HFBackend, LoraSpec

        lora = LoraSpec(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets, cfg.seed) if cfg.lora_r else None
        fwd = HFBackend(model, lora=lora)
        if cfg.compile:
            fwd.compile_forward()
        return fwd
    return torch.compile(model) if cfg.compile else model


def _data_fingerprint(objective) -> str:
    """A hash of what the objective trains on: its token sequences (and a probe objective's probes),
    so that a run resumes only on the data it started with."""
    h = hashlib.sha256(type(objective).__name__.encode())
    for attr in ("chosen", "rejected", "seqs", "safe", "harmful"):
        if hasattr(objective, attr):
            h.update(json.dumps([attr, getattr(objective, attr)]).encode())
    for mod in getattr(objective, "modules", ()):
        h.update(mod.hook_name.encode())
        for b in mod.buffers():
            h.update(b.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def _fingerprint(model: HookedTransformer) -> list[float]:
    """Sums of the weights training starts from (a LoRA run resumes only on the same base): each
    parameter's sum, then each one's row and column sums weighted by position (so reordered
    neurons show). The first four entries are what runs saved before all parameters counted."""
    plain, ramp = [], []
    for _, p in model.named_parameters():
        v = p.detach().double().reshape(p.shape[0] if p.dim() else 1, -1)
        rows, cols = v.sum(1), v.sum(0)
        plain.append(float(rows.sum()))
        ramp.append(float((rows * torch.linspace(-1, 1, len(rows), dtype=v.dtype, device=v.device)).sum()
                          + (cols * torch.linspace(-1, 1, len(cols), dtype=v.dtype, device=v.device)).sum()))
    return plain + ramp


def _write_back(fwd_model, model: HookedTransformer) -> None:
    """Put the trained weights into ``model`` (a no-op when the step ran on it)."""
    if hasattr(fwd_model, "write_back"):
        fwd_model.write_back(model)


def probe_goodhart(before: HookedTransformer, after: HookedTransformer, probes: Sequence, data, held_out: Sequence = (),
                   test_size: int | float = 0.25, train_size: int | None = None, seed: int = 0, max_length: int = 64,
                   progress: bool = True):
    """The Goodhart measurement of probe-based fine-tuning: for every probe, its held-out
    accuracy on the model it was fitted on (before), applied unchanged to the trained model
    (after), and of a probe re-fitted at the same hook on the trained model.

    ``probes`` were trained against; ``held_out`` never were. All use one stratified split.
    """
    import pandas as pd

    from mechtox.activations import collect_activations
    from mechtox.probe import _metrics, fit_probe, split_indices, without_repeats

    allp = [(p, "trained against") for p in probes] + [(p, "held out") for p in held_out]
    if not allp:
        raise MechtoxError("no probes to measure")
    hooks = sorted({p.hook_name for p, _ in allp})
    (tr, te), _ = without_repeats(data.texts, split_indices(data.labels, test_size, seed, train_size), data.labels)
    acts = {}
    for tag, m in (("before", before), ("after", after)):
        acts[tag] = collect_activations(m, data.texts, hooks, "mean", max_length=max_length, progress=progress).acts
    y = data.labels
    rows = []
    for p, role in allp:
        h = p.hook_name
        Xb, Xa = acts["before"][h], acts["after"][h]
        mb = _metrics(y[te], p.logits(Xb[te]).numpy())
        ma = _metrics(y[te], p.logits(Xa[te]).numpy())
        refit = fit_probe(Xa, y, h, p.method if p.method in ("logreg", "diffmean", "svm") else "logreg",
                          seed=seed, split=(tr, te))
        rows.append({"probe": p.name, "role": role, "hook": h, "acc_before": mb["accuracy"], "acc_after": ma["accuracy"],
                     "acc_retrained": refit.metrics["test_accuracy"], "auroc_before": mb["auroc"],
                     "auroc_after": ma["auroc"], "auroc_retrained": refit.metrics["test_auroc"]})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- data and objectives


def steered_pairs(model: HookedTransformer, prompts: Sequence[str], direction, alpha: float, scorer,
                  max_new_tokens: int = 20, batch_size: int = 25, source: str = "", direction_name: str = "",
                  progress: bool = True) -> PreferencePairs:
    """Lee et al.'s pair construction, done with activation steering: chosen = the greedy
    continuation, rejected = the greedy continuation with ``alpha`` x the unit ``direction`` added
    at its hook. Pairs with an empty or identical side are dropped; both sides are scored."""
    from mechtox.generation import generate
    from mechtox.interventions import applied, steer

    if not alpha > 0:
        raise MechtoxError(f"alpha {alpha}: must be above 0 (the rejected side is steered toward toxicity)")
    chosen = generate(model, prompts, max_new_tokens, 32, batch_size, progress=progress)
    with applied(model, steer(direction, alpha)):
        rejected = generate(model, prompts, max_new_tokens, 32, batch_size, progress=progress)
    sc, sr = scorer(chosen.continuations), scorer(rejected.continuations)
    keep = [i for i in range(len(prompts)) if chosen.continuations[i].strip() and rejected.continuations[i].strip()
            and chosen.continuations[i] != rejected.continuations[i]]
    extra = [{"chosen_score": float(sc[i]), "rejected_score": float(sr[i]), "scorer": scorer.name,
              "direction": direction_name, "alpha": alpha} for i in keep]
    return PreferencePairs([prompts[i] for i in keep], [chosen.continuations[i] for i in keep],
                           [rejected.continuations[i] for i in keep], source, extra)


def make_objective(model: HookedTransformer, cfg: TrainConfig, pairs: PreferencePairs | None,
                   probes: Sequence = (), task: tuple[Sequence[str], Sequence[str]] | None = None):
    """The objective ``cfg.objective`` names, on its data: pairs (dpo, dpo-probe, sft-probe; sap's
    safety pairs), probes (sft-probe) and the benign task's (prompts, targets) (sft, sap)."""
    if cfg.objective == "sft-probe":
        if not probes:
            raise MechtoxError("train sft-probe needs --probe NAME[,NAME...] (the probes trained against)")
        return ProbeSFTObjective(model, pairs.prompt, pairs.chosen, list(probes), cfg)
    if cfg.objective in ("sft", "sap"):
        if task is None:
            raise MechtoxError("no task data: pass --task PATH (a {prompt, gold} JSONL or a pair set)")
        if cfg.objective == "sft":
            return SFTObjective(model, task[0], task[1], cfg)
        return SAPObjective(model, task[0], task[1], pairs, cfg)
    return DPOObjective(model, pairs, cfg)
