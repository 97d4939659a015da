"""A small mutation check: do the fast tests notice a one-line slip in the core modules?

Each mutant below replaces one exact snippet of a core module (it must occur exactly once) with a
plausible bug: an off-by-one mask, the wrong model's weights, a dropped sign, a missing
normalisation. The mutants were written from reading the code, before the tests meant to catch
them. For each mutant, a temporary copy of the tree gets the change and the fast tests of that
module run there (``pytest -m "not slow" -x``): a failing run catches the mutant, a passing run
lets it survive. The working tree is never modified.

    python tools/mutate.py                 # every mutant (about 28 minutes on 2 cores)
    python tools/mutate.py --only training # mutants of one module (or any substring of their id)
    python tools/mutate.py --list          # the mutants, without running anything

The last line reads ``mutation score: CAUGHT/TOTAL (P%)``. A developer tool, not part of CI.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    id: str
    module: str  # file under mechtox/
    old: str
    new: str
    why: str


TESTS = {  # the fast test files of each module
    "attribution.py": ["tests/test_attribution.py"],
    "training.py": ["tests/test_training.py", "tests/test_lora.py"],
    "probe.py": ["tests/test_probe.py", "tests/test_probe_transfer.py"],
    "interventions.py": ["tests/test_interventions.py"],
    "neurons.py": ["tests/test_neurons.py"],
    "evaluate.py": ["tests/test_evaluate.py"],
    "activations.py": ["tests/test_activations.py"],
    "generation.py": ["tests/test_generation.py"],
    "directions.py": ["tests/test_directions.py"],  # every module of the mechtox/directions package
    "validation.py": ["tests/test_directions.py", "tests/test_validation.py"],
    "scorers.py": ["tests/test_scorers.py"],
    "workspace.py": ["tests/test_main_job.py"],
    "data.py": ["tests/test_data.py", "tests/test_data_sources.py", "tests/test_api_inputs.py"],
    "models.py": ["tests/test_models.py", "tests/test_hf_dirs.py"],
    "hf_backend.py": ["tests/test_hf_backend.py", "tests/test_lora.py"],
    "jobs/probe.py": ["tests/test_probe_transfer.py"],
    "jobs/export.py": ["tests/test_hf_dirs.py"],
}



def tests_of(module: str) -> list[str]:
    """The fast test files of a module (a module of a package: those of the package)."""
    return TESTS.get(module) or TESTS[module.split("/")[0] + ".py"]


M = Mutant
MUTANTS = [
    # ------------------------------------------------------------------ attribution
    M("attribution-post-norm-not-refused", "attribution.py",
      "    check_decomposable(before)\n    vec = getattr(direction", "    vec = getattr(direction",
      "a model whose post-norm centres (LayerNorm) is attributed as if its writes reached the stream"),
    M("attribution-check-always-passes", "attribution.py",
      'return abs(self.check["error"]) <= self.check_limit  # NaN fails', "return True",
      "a failed exactness check passes silently"),
    M("attribution-resid-mid-as-pre", "attribution.py",
      'm = re.match(r"^blocks\\.(\\d+)\\.hook_resid_(post|pre)$", hook_name)',
      'm = re.match(r"^blocks\\.(\\d+)\\.hook_resid_(post|mid|pre)$", hook_name)',
      "a direction at blocks.L.hook_resid_mid is attributed as the stream after block L-1"),
    M("attribution-groups-from-v-after", "attribution.py",
      "cos_b = (d_b / norm_b.clamp_min(1e-12))", "cos_b = (d_a / norm_b.clamp_min(1e-12))",
      "T/A grouping from cos(v_after, w) instead of cos(v_before, w)"),
    M("attribution-after-mean-by-before-count", "attribution.py",
      "a_a = sa.act / sa.n_tokens", "a_a = sa.act / sb.n_tokens",
      "the after model's mean activations divided by the before model's token count"),
    M("attribution-after-value-vectors-from-before", "attribution.py",
      "d_a, _ = _d(after, w, L)", "d_a, _ = _d(before, w, L)",
      "the after model's value vectors taken from the before model"),
    M("attribution-mask-off-by-one", "attribution.py",
      "mask[r, starts[i] - 1: len(seqs[i]) - 1] = 1.0", "mask[r, starts[i]: len(seqs[i])] = 1.0",
      "evaluation positions are the generated tokens, not the positions that predict them"),
    M("attribution-P-from-after", "attribution.py",
      "P = act_before >= 0", "P = act_after >= 0",
      "P/N grouping from the after model's activation sign"),
    M("attribution-net-share-over-gross", "attribution.py",
      '"share_of_net": c / net if net', '"share_of_net": c / gross if net',
      "share of the net change divided by the gross reduction"),
    M("attribution-resid-pre-layer", "attribution.py",
      'layer = layer if m.group(2) == "post" else layer - 1', "layer = layer",
      "a hook_resid_pre direction attributed through its own block"),
    M("attribution-heads-after-w-o-from-before", "attribution.py",
      "heads = _head_table(sb.z / sb.n_tokens, sa.z / sa.n_tokens, ub, ua)",
      "heads = _head_table(sb.z / sb.n_tokens, sa.z / sa.n_tokens, ub, ub)",
      "the after model's heads projected through the before model's W_O"),
    M("attribution-heads-weight-part-at-before-z", "attribution.py",
      '"delta_weight": (za * (ub - ua)).sum(-1)', '"delta_weight": (zb * (ub - ua)).sum(-1)',
      "a head's weight part at the before model's z: the two parts no longer sum to its change"),
    M("attribution-head-groups-from-after", "attribution.py",
      'toward, lower = t["p_before"] >= 0, t["delta"] > 0', 'toward, lower = t["p_after"] >= 0, t["delta"] > 0',
      "head groups by the after model's projection sign"),
    M("attribution-z-unmasked", "attribution.py",
      's = (z.float() * state["mask"][..., None, None]).sum((0, 1)).double()',
      "s = z.float().sum((0, 1)).double()",
      "head sums over every position, prompt and padding included"),
    M("attribution-attn-bias-before-only", "attribution.py",
      'attn_bias = _bias_proj(before, w, L, "attn") * sc_b[:, 0] - _bias_proj(after, w, L, "attn") * sc_a[:, 0]',
      'attn_bias = _bias_proj(before, w, L, "attn") * sc_b[:, 0]',
      "the exactness check's attention-bias part ignores the after model"),
    M("attribution-pos-embed-left-out", "attribution.py",
      'hooks.append(("hook_pos_embed", part_hook))', "pass",
      "the exactness check leaves GPT-2's position embeddings out"),
    M("attribution-post-norm-scale-ignored", "attribution.py",
      'm = state["mask"] / scale[..., 0].float()', 'm = state["mask"]',
      "a post-norm model's activations and z averaged without dividing by each token's norm scale"),
    M("attribution-post-norm-head-weight-ignored", "attribution.py",
      "W_O.detach().float().cpu() @ _weighted(w, norm)", "W_O.detach().float().cpu() @ w",
      "a post-norm model's heads projected through W_O without the post-attention norm's weight"),
    M("attribution-post-norm-bias-once-per-token", "attribution.py",
      "sc_b, sc_a = sb.inv_scale / sb.n_tokens, sa.inv_scale / sa.n_tokens",
      "sc_b, sc_a = torch.ones(L, 2), torch.ones(L, 2)",
      "a post-norm model's output biases counted once per token, not 1 / scale"),
    M("attribution-patch-to-scaled-means", "attribution.py",
      "        means[: act_after.shape[0]] = act_after\n", "        pass\n",
      "a post-norm model's neurons patched to their activations divided by the norm scale"),
    # ------------------------------------------------------------------ training
    M("training-patience-off-by-one", "training.py",
      "if cfg.patience and bad_evals >= cfg.patience:", "if cfg.patience and bad_evals > cfg.patience:",
      "early stopping waits one evaluation more than --patience says"),
    M("training-patience-without-validation", "training.py",
      "    if cfg.patience and not va:", "    if cfg.patience and va is None:",
      "early stopping with no validation examples stops on NaN losses, silently"),
    M("training-sft-loss-per-sequence", "training.py",
      "return -completion_token_logps(logits, batch).sum() / batch.label_mask.sum()",
      "return -(completion_token_logps(logits, batch).sum(-1) / batch.label_mask.sum(-1)).mean()",
      "SFT loss averaged per sequence instead of per target token"),
    M("training-labels-off-by-one", "training.py",
      "lab[i, p - 1: len(s) - 1] = 1", "lab[i, p: len(s) - 1] = 1",
      "the first completion token is not a label"),
    M("training-dpo-wrong-reference", "training.py",
      "rejected_rewards = beta * (rejected_logps - ref_rejected_logps)",
      "rejected_rewards = beta * (rejected_logps - ref_chosen_logps)",
      "the rejected reward against the chosen reference log-prob"),
    M("training-dpo-accuracy-ties", "training.py",
      '"rewards/accuracies": (cr > rr).float().mean()', '"rewards/accuracies": (cr >= rr).float().mean()',
      "rewards/accuracies counts ties as correct (1.0 at the start)"),
    M("training-prompt-keeps-first-tokens", "training.py",
      "encode(model, prompts, max_prompt_tokens, truncate=\"left\") if any(prompts)",
      "encode(model, prompts, max_prompt_tokens, truncate=\"right\") if any(prompts)",
      "long prompts keep their first tokens, not the ones next to the completion"),
    M("training-probe-sft-sums-probes", "training.py",
      "probe = scores.mean()", "probe = scores.sum(0).mean()",
      "probe-SFT sums the probe scores instead of averaging over probes"),
    M("training-probe-sft-pools-labels", "training.py",
      "mod.pooled(store[mod.hook_name].float(), batch.attention_mask)",
      "mod.pooled(store[mod.hook_name].float(), batch.label_mask)",
      "probe-SFT pools over the target positions only, not the whole text the probe was fitted on"),
    M("training-sap-safe-perturbation", "training.py",
      "scale = self.cfg.sap_rho * w_norm / (g_norm + 1e-12)", "scale = -self.cfg.sap_rho * w_norm / (g_norm + 1e-12)",
      "SAP perturbs the weights toward safety instead of harm"),
    M("training-sap-vector-sign", "training.py",
      "(self.cfg.sap_eps * mags[h] * torch.sign(g))", "(self.cfg.sap_eps * mags[h] * -torch.sign(g))",
      "SAP's vector steps against the task-loss gradient"),
    M("training-warmup-starts-at-zero", "training.py",
      "min(1.0, (step + 1) / warmup)", "min(1.0, step / warmup)",
      "the first warm-up step has learning rate 0"),
    M("training-grad-accum-not-divided", "training.py",
      "(loss / cfg.grad_accum).backward()", "loss.backward()",
      "accumulated gradients are summed, not averaged"),
    M("training-logps-mean", "training.py",
      "return completion_token_logps(logits, batch).sum(-1)", "return completion_token_logps(logits, batch).mean(-1)",
      "sequence log-prob averaged over all positions instead of summed over completion tokens"),
    M("training-rank-pairs-swapped", "training.py",
      "swap = sc > sr", "swap = sc < sr",
      "probe-ranked DPO prefers the completion the probe finds MORE toxic"),
    M("training-safety-temperature", "training.py",
      "(safe_logps - harmful_logps) / temperature", "(safe_logps - harmful_logps) * temperature",
      "SAP's safety loss multiplies by the temperature"),
    # ------------------------------------------------------------------ probe
    M("probe-svm-weight-not-mapped-back", "probe.py",
      "d = svm.coef_[0] / sigma", "d = svm.coef_[0]",
      "the linear SVM's weight left in standardised coordinates"),
    M("probe-logreg-bias-not-mapped-back", "probe.py",
      "return w, float(clf.intercept_[0] - mu @ w)", "return w, float(clf.intercept_[0])",
      "the logistic-regression bias left in standardised coordinates"),
    M("probe-diffmean-no-contrast", "probe.py",
      "d = np.average(X[y == 1], axis=0, weights=sw[y == 1]) - np.average(X[y == 0], axis=0, weights=sw[y == 0])",
      "d = np.average(X[y == 1], axis=0, weights=sw[y == 1])",
      "the difference-of-means direction is the toxic mean alone"),
    M("probe-best-by-min", "probe.py",
      "best = str(table.loc[table[select_on].idxmax(), \"hook\"])", "best = str(table.loc[table[select_on].idxmin(), \"hook\"])",
      "the sweep picks the worst layer"),
    M("probe-module-bias-sign", "probe.py",
      "torch.sigmoid(acts @ self.weight.to(acts.dtype) + self.bias.to(acts.dtype))",
      "torch.sigmoid(acts @ self.weight.to(acts.dtype) - self.bias.to(acts.dtype))",
      "the differentiable probe subtracts its bias"),
    M("probe-test-metrics-on-train", "probe.py",
      'metrics |= {f"test_{k}": v for k, v in _metrics(y[te], logits(te, w, b)).items()}',
      'metrics |= {f"test_{k}": v for k, v in _metrics(y[tr], logits(tr, w, b)).items()}',
      "held-out metrics computed on the training rows"),
    M("probe-bootstrap-ties-ordinal", "probe.py",
      "rankdata(p, axis=1) * pos", 'rankdata(p, axis=1, method="ordinal") * pos',
      "bootstrap AUROC breaks ties by position instead of counting them half"),
    M("probe-bootstrap-keeps-one-label-resamples", "probe.py",
      "both = (yb == 1).any(1) & (yb == 0).any(1)", "both = (yb == 1).any(1)",
      "resamples with no non-toxic text enter the intervals"),
    M("probe-bootstrap-f1-halved", "probe.py",
      '"f1": np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)', '"f1": np.where(denom > 0, tp / np.maximum(denom, 1), 0.0)',
      "bootstrap F1 without its factor 2"),
    M("probe-reliability-top-bin-lost", "probe.py",
      "b = np.minimum((p * bins).astype(int), bins - 1)", "b = (p * bins).astype(int)",
      "a probability of exactly 1 falls outside the last bin and is dropped"),
    M("probe-records-held-out-texts", "probe.py",
      '"fitted_text_hashes": "".join(text_hashes([data.texts[i] for i in split[0]]))',
      '"fitted_text_hashes": "".join(text_hashes([data.texts[i] for i in split[1]]))',
      "a probe's record of its training texts holds its held-out texts"),
    M("probe-scorer-reads-64-tokens", "probe.py",
      "self.batch_size, self.max_length = batch_size, max_length or fitted_length(probe)",
      "self.batch_size, self.max_length = batch_size, max_length or 64",
      "a probe scores texts at 64 tokens whatever length it was fitted on"),
    M("export-architecture-checked-after-loading", "jobs/export.py",
      "if arch is not None and arch not in EXPORT_ARCHITECTURES:", "if False:",
      "the export of a model it cannot write loads the model before it refuses"),
    M("export-check-only-printed", "jobs/export.py",
      'if not foreign and not found["diff"] <= tolerance:', 'if not foreign and found["diff"] > 1e9:',
      "an export whose logits differ from the model's is written and reported as done"),
    M("probe-eval-reads-64-tokens", "jobs/probe.py",
      "length = cfg.max_length or fitted", "length = cfg.fit_length",
      "probe --eval without --max-length reads 64 tokens whatever length the probe was fitted on"),
    # ------------------------------------------------------------------ interventions
    M("interventions-random-pool-off-by-one", "interventions.py",
      "        if len(idx) > pool:", "        if len(idx) >= pool:",
      "a layer with exactly as many other neurons as needed is refused a random baseline"),
    M("interventions-newest-is-first", "interventions.py",
      "act[:, -1] = act[:, -1] + v", "act[:, 0] = act[:, 0] + v",
      "newest_only steering adds to the first position"),
    M("interventions-subtract-drops-newest", "interventions.py",
      "return make_add_hook(direction, -alpha, newest_only)", "return make_add_hook(direction, -alpha)",
      "subtract ignores newest_only"),
    M("interventions-value-vector-axis", "interventions.py",
      '_neuron_edit(f"blocks.{layer}.mlp.W_out", idx, 0, 0.0)', '_neuron_edit(f"blocks.{layer}.mlp.W_out", idx, 1, 0.0)',
      "zeroing value vectors zeroes residual dimensions instead"),
    M("interventions-restore-after-second-edit", "interventions.py",
      "            if name not in saved:\n", "            if True:\n",
      "a parameter edited twice is restored to its once-edited value"),
    M("interventions-random-not-excluding", "interventions.py",
      "pool = np.setdiff1d(np.arange(d_mlp), np.asarray(excl.get(layer, []), dtype=int))", "pool = np.arange(d_mlp)",
      "random baseline neurons may include the ablated ones"),
    M("interventions-mean-ablation-layer0", "interventions.py",
      "make_neuron_hook(idx, means[layer, idx].float()", "make_neuron_hook(idx, means[0, idx].float()",
      "mean ablation takes every layer's means from layer 0"),
    M("interventions-patch-noop", "interventions.py",
      "            return src.clone()\n", "            return act\n",
      "a whole-activation patch leaves the activation unchanged"),
    # ------------------------------------------------------------------ neurons
    M("neurons-post-norm-weight-left-out", "neurons.py",
      "return V if g is None else V * g.float()", "return V",
      "a Gemma-style model's neurons ranked by W_out, not by what their post-MLP norm adds"),
    M("neurons-post-norm-decoded-raw", "neurons.py",
      "return v if g is None else v * g.to(v)", "return v",
      "a Gemma-style model's top neurons decoded (logit lens, SVD) from W_out, not what reaches the stream"),
    M("neurons-lens-ignores-norm-weight", "neurons.py",
      "W_U = w.detach().float().unsqueeze(1) * W_U", "W_U = W_U",
      "the logit lens ignores the final norm's weight"),
    M("neurons-lens-no-centring", "neurons.py",
      "vecs = vecs - vecs.mean(-1, keepdim=True)", "vecs = vecs",
      "LayerNorm models' logit lens does not centre"),
    M("neurons-rank-by-dot", "neurons.py",
      "cos = dot / norm.clamp_min(1e-12)", "cos = dot",
      "the ranking uses dot products, not cosines"),
    M("neurons-svd-unsigned", "neurons.py",
      "signs = torch.sign(vecs @ w)", "signs = torch.ones(vecs.shape[0])",
      "SVD singular vectors keep an arbitrary sign"),
    M("neurons-activation-sign-flipped", "neurons.py",
      "torch.where(torch.as_tensor(mean_act) < 0, -1.0, 1.0)", "torch.where(torch.as_tensor(mean_act) > 0, -1.0, 1.0)",
      "signed decoding flips positive neurons"),
    M("neurons-mean-is-sum", "neurons.py",
      "return torch.stack([acts[h].mean(0) for h in hooks])", "return torch.stack([acts[h].sum(0) for h in hooks])",
      "mean activations are sums"),
    M("neurons-diag-metric-inverted", "neurons.py",
      "cos = dot / ((V / s).norm(dim=-1).clamp_min(1e-12) * (w * s).norm())",
      "cos = dot / ((V * s).norm(dim=-1).clamp_min(1e-12) * (w * s).norm())",
      "a diagonal metric scales value vectors the wrong way"),
    # ------------------------------------------------------------------ evaluate
    M("evaluate-calibrate-takes-nan", "evaluate.py",
      "if not ppl <= base * (1 + max_rise):", "if ppl > base * (1 + max_rise):",
      "a NaN perplexity passes the calibration, and its alpha is taken"),
    M("evaluate-chunks-without-bos", "evaluate.py",
      "return [([bos] if bos is not None else []) + c for c in chunks if len(c) > 1]",
      "return [c for c in chunks if len(c) > 1]",
      "perplexity chunks no longer start with BOS"),
    M("evaluate-ppl-mask-shift", "evaluate.py",
      "m = mask[:, 1:].bool()", "m = mask[:, :-1].bool()",
      "perplexity counts the prediction of padding after the last real token"),
    M("evaluate-ppl-is-nll", "evaluate.py",
      'return {"ppl": math.exp(nll), "nll": nll, "tokens": count}', 'return {"ppl": nll, "nll": nll, "tokens": count}',
      "'perplexity' that is really mean NLL"),
    M("evaluate-f1-half", "evaluate.py",
      "return 2 * prec * rec / (prec + rec)", "return prec * rec / (prec + rec)",
      "F1 without the factor 2"),
    M("evaluate-chunk-step", "evaluate.py",
      "step = window - (1 if bos is not None else 0)", "step = window",
      "chunks with BOS are one token longer than the window"),
    # ------------------------------------------------------------------ activations
    M("activations-mean-over-padding", "activations.py",
      "return (act * m).sum(1) / m.sum(1).clamp_min(1)", "return (act * m).sum(1) / m.shape[1]",
      "mean pooling divides by the padded length"),
    M("activations-last-is-pad", "activations.py",
      "last = mask.shape[1] - 1 - mask.flip(1).float().argmax(1)", "last = torch.full((mask.shape[0],), mask.shape[1] - 1)",
      "last-token pooling takes the last position, padding included"),
    M("activations-skip-first-of-first", "activations.py",
      "mask[row, : skips[i]] = 0", "mask[row, : skips[b[0]]] = 0",
      "per-sequence skip counts all taken from the batch's first sequence"),
    M("activations-negative-layers", "activations.py",
      "layers = [int(x) + (n_layers if int(x) < 0 else 0) for x in layers]", "layers = [int(x) for x in layers]",
      "negative layer numbers are not counted from the end"),
    M("activations-token-index-batch-row", "activations.py",
      "tok_index.append(torch.stack([torch.as_tensor(b)[rows.cpu()], cols.cpu()], 1))",
      "tok_index.append(torch.stack([rows.cpu(), cols.cpu()], 1))",
      "token pooling's index gives the batch row, not the text"),
    # ------------------------------------------------------------------ generation
    M("generation-right-padding", "generation.py",
      'batch = pad([ids[i] for i in b], pid, "left").to(device)', 'batch = pad([ids[i] for i in b], pid, "right").to(device)',
      "generation batches padded on the right"),
    M("generation-keeps-eos", "generation.py",
      "toks = toks[: toks.index(eos)]", "toks = toks[: toks.index(eos) + 1]",
      "continuations keep their EOS token"),
    M("generation-prompt-keeps-first", "generation.py",
      'ids = token_ids(model, prompts, max_prompt_tokens, truncate="left")',
      'ids = token_ids(model, prompts, max_prompt_tokens, truncate="right")',
      "long prompts keep their first tokens"),
    # ------------------------------------------------------------------ directions
    M("directions-gradient-counts-pads", "directions/methods.py",
      "obj = (logp[..., tox_idx].logsumexp(-1) * mask).sum()", "obj = logp[..., tox_idx].logsumexp(-1).sum()",
      "the gradient direction's objective includes pad positions"),
    M("directions-token-scores-per-continuation-length", "directions/patching.py",
      "per_token[layer] += contrib / int(mask.sum())", "per_token[layer] += contrib / len(cont)",
      "token_scores divided by the continuation length, not the toxic-word tokens"),
    M("directions-attribution-act-at-token", "directions/patching.py",
      "act_sum[layer] += a[:-1][mask.cpu()].sum(0)", "act_sum[layer] += a[1:][mask.cpu()].sum(0)",
      "attribution mean_act read at the toxic token instead of the position that predicts it"),
    M("directions-log-ratio-not-odds", "directions/tokens.py",
      "lo = np.log(yt / (n_t - tox[keep] + alpha)) - np.log(yn / (n_n - non[keep] + alpha))",
      "lo = np.log(yt / (n_t + alpha)) - np.log(yn / (n_n + alpha))",
      "token statistics: log ratio of proportions instead of log-odds"),
    M("directions-nontoxic-set-least-specific", "directions/tokens.py",
      'non["token_id"].tail(kn)', 'non["token_id"].head(kn)',
      "the non-toxic token set takes the least non-toxic tokens"),
    M("directions-unembed-baseline-swapped", "directions/methods.py",
      'base = B.mean(1) if baseline == "vocab" else B[:, sets.nontoxic].mean(1)',
      'base = B[:, sets.nontoxic].mean(1) if baseline == "vocab" else B.mean(1)',
      "the unembedding direction's baseline options swapped"),
    M("directions-nontoxic-threshold", "directions/generations.py",
      "non = [i for i in keep if scores[i] < nontoxic_threshold]", "non = [i for i in keep if scores[i] < toxic_threshold]",
      "non-toxic generations are everything below the toxic threshold"),
    M("directions-benign-count-all-tokens", "directions/patching.py",
      "count += logp.numel()", "count += toks.numel()",
      "benign attribution divides by the tokens, not the predicted tokens"),
    M("directions-specific-no-clamp", "directions/patching.py",
      "self.token_scores - benign.detach().float().cpu().clamp(min=0)", "self.token_scores - benign.detach().float().cpu()",
      "neurons whose ablation would help ordinary text are rewarded"),
    M("directions-gen-diffmean-no-contrast", "directions/methods.py",
      "d = acts[: len(tox)].mean(0) - acts[len(tox):].mean(0)", "d = acts[: len(tox)].mean(0)",
      "the generation diff-of-means is the toxic mean alone"),
    M("directions-final-norm-scale", "directions/metrics.py",
      "        return 1.0 / g\n", "        return g\n",
      "the final_norm metric scales by g instead of 1/g"),
    M("directions-copied-words-not-skipped", "directions/generations.py",
      "if w and not (_word_set(w) & skip_words)]", "if w]",
      "skip_copied keeps the words copied from the prompt"),
    M("directions-copy-stats-any-flag", "directions/generations.py",
      "copied += bool(b & _word_set(gens.prompts[i]))", "copied += bool(b)",
      "every flagged continuation counts as copied"),
    # ------------------------------------------------------------------ validation
    M("validation-random-baseline-checked-late", "validation.py",
      "            if k in ks:\n                check_random_baseline(", "            if k in ks and False:\n                check_random_baseline(",
      "a random baseline that cannot be drawn fails only after the generations"),
    M("validation-precision-unsigned", "validation.py",
      "lens_hits(model, table_value_vectors(model, top, signed), toxic_ids, lens_k)",
      "lens_hits(model, table_value_vectors(model, top, False), toxic_ids, lens_k)",
      "signed precision reads the raw value vectors"),
    M("validation-drop-sign", "validation.py",
      '"drop": base.mean - t.mean', '"drop": t.mean - base.mean',
      "the drop in toxicity has the wrong sign"),
    M("validation-random-not-excluding-top", "validation.py",
      "seed + 1000 * dr + k, exclude=top)", "seed + 1000 * dr + k, exclude=None)",
      "random draws may contain the ranked neurons"),
    M("validation-ratio-ignores-spread", "validation.py",
      "bar = max(float(np.mean(random_drops)), sd)", "bar = float(np.mean(random_drops))",
      "the random bar ignores the spread of the draws"),
    M("validation-goal-negative-drop", "validation.py",
      "causal = bool(drop > 0 and drop >= bar)", "causal = bool(drop >= bar)",
      "a negative drop passes against a negative random baseline"),
    M("validation-agreement-union", "validation.py",
      'f"overlap@{k}": len(tops[a] & tops[b]) / k', 'f"overlap@{k}": len(tops[a] | tops[b]) / k',
      "top-k overlap counts the union"),
    # ------------------------------------------------------------------ what a run reuses or resumes on
    M("training-fingerprint-first-four", "training.py",
      "for _, p in model.named_parameters():", "for _, p in list(model.named_parameters())[:4]:",
      "a LoRA run resumes on a base that differs after its first four parameters"),
    M("training-resume-ignores-data", "training.py",
      'if meta.get("data", data_print) != data_print:', "if False:",
      "a run resumes on other pairs with the old pairs' reference log-probs"),
    M("workspace-identity-ignores-files", "workspace.py",
      "parts += [_file_stamp(f) for f in files if f.is_file()]", "parts += []",
      "the main job reuses its steps after the model at the same path was saved again"),
    # ------------------------------------------------------------------ scorers
    M("scorers-profanity-skips-first-of-batch", "scorers.py",
      "chunk = idx[s: s + self.batch_size]", "chunk = idx[s + 1: s + self.batch_size]",
      "the profanity scorer leaves the first text of each batch at 0"),
    M("scorers-detoxify-mean", "scorers.py",
      "out.append(np.max(np.stack(", "out.append(np.mean(np.stack(",
      "Detoxify's score is the mean of its attributes, not the max"),
    M("scorers-perspective-first-attribute", "scorers.py",
      "return float(max(scores)) if scores", "return float(scores[0]) if scores",
      "Perspective's score is the first attribute's, not the max"),
    M("scorers-detoxify-variant-ignored", "scorers.py",
      'DetoxifyScorer(name.split(":", 1)[1] if ":" in name else "original")', 'DetoxifyScorer("original")',
      "detoxify:VARIANT loads the original checkpoint"),
    # ------------------------------------------------------------------ data
    M("data-one-label-always-refused", "data.py",
      "    if both_labels and len(set(y.tolist())) < 2:", "    if len(set(y.tolist())) < 2:",
      "a file of one label is refused even where one label will do (rank --act-data)"),
    M("data-truncate-side-swapped", "data.py",
      'x = x[:max_length] if truncate == "right" else x[-max_length:]',
      'x = x[-max_length:] if truncate == "right" else x[:max_length]',
      "encode keeps the wrong end of a long text"),
    M("data-left-padding-mask-shifted", "data.py",
      "tokens[i, n - len(x):], mask[i, n - len(x):] = t, 1", "tokens[i, n - len(x):], mask[i, : len(x)] = t, 1",
      "left padding marks the pads as the real tokens"),
    M("data-score-threshold-strict", "data.py",
      "return int(x >= threshold)", "return int(x > threshold)",
      "a score exactly at the threshold is read as non-toxic"),
    M("data-limit-off-by-one", "data.py",
      "data = data.subset(np.arange(limit))", "data = data.subset(np.arange(limit - 1))",
      "load_labelled(limit=n) returns n - 1 texts"),
    M("data-bos-appended", "data.py",
      "x = [tok.bos_token_id] + x", "x = x + [tok.bos_token_id]",
      "the BOS token goes at the end"),
    M("data-id-range-inclusive", "data.py",
      "row.max() < model.cfg.d_vocab", "row.max() <= model.cfg.d_vocab",
      "a token id equal to the vocabulary size passes the check"),
    M("data-id-truncate-side-swapped", "data.py",
      'row = row[:max_length] if truncate == "right" else row[-max_length:]',
      'row = row[:max_length]',
      "token-id input ignores truncate='left'"),
    # ------------------------------------------------------------------ models (conversion to and from transformers)
    M("models-gemma-biases-trained", "models.py",
      '"Gemma2ForCausalLM", "Gemma3ForCausalLM", "Gemma3ForConditionalGeneration"',
      '"Gemma2ForCausalLM", "Gemma3ForConditionalGeneration"',
      "training moves the zero biases TransformerLens gives Gemma 3, which the real model lacks"),
    M("models-qwen2-qkv-biases-frozen", "models.py",
      'return last.lstrip("_") not in ("b_Q", "b_K", "b_V")', "return True",
      "Qwen 2's query, key and value biases, which it has, are held at zero in training"),
    M("models-export-rms-eps", "models.py",
      "rms_norm_eps=cfg.eps, tie_word_embeddings=False,", "rms_norm_eps=1e-5, tie_word_embeddings=False,",
      "the exported Llama config takes the default RMS epsilon, not the model's"),
    M("models-export-rope-theta", "models.py",
      "rope_theta=cfg.rotary_base)", "rope_theta=10000.0)",
      "the exported Llama config takes the default rotary base, not the model's"),
    M("models-tl-config-folder-named-after-the-model", "models.py",
      'tempfile.TemporaryDirectory(prefix="mechtox-config-")', 'tempfile.TemporaryDirectory(prefix=f"{model_name}-")',
      "a directory's config is read from a folder of its name, which TransformerLens takes for the architecture "
      "where it holds 'llama' or 'gemma'"),
    M("models-tl-config-context-uncapped", "models.py",
      'rotary = cfg.positional_embedding_type == "rotary"', "rotary = False",
      "a rotary model from a directory keeps its full context (8,192 for Gemma 3: per-layer masks of 64M entries)"),
    M("models-import-llama3-rope-scaling-dropped", "models.py",
      "        **scaling,\n", "",
      "a Llama 3 directory is read without its rotary scaling (NTK by parts): logits off by 7 on 40 tokens"),
    M("models-export-rope-scaling-dropped", "models.py",
      "transformers.LlamaConfig(**common, rope_scaling=_rope_scaling(cfg))",
      "transformers.LlamaConfig(**common, rope_scaling=None)",
      "the transformers model the hf backend trains and the export writes drops Llama 3's rotary scaling"),
    M("models-llama-bos-not-prepended", "models.py",
      "model.cfg.default_prepend_bos = bool(model.cfg.tokenizer_prepends_bos)", "pass",
      "a Llama directory whose tokenizer adds BOS (Llama 2 / 3) runs without it"),
    M("models-conversion-check-always-passes", "models.py",
      "if not diff <= 1e-3 * max(1.0, size):  # written so that NaN fails", "if False:",
      "a conversion that gives other logits than transformers loads silently"),
    M("models-export-mistral-window-dropped", "models.py",
      "sliding_window=cfg.window_size if cfg.use_local_attn else None", "sliding_window=None",
      "Mistral's sliding window is left out of the transformers model the hf backend trains and the export writes"),
    M("models-export-qwen2-biases-zero", "models.py",
      'out[q + f"self_attn.{x}_proj.bias"] = sd[p + f"attn.{under}b_{x.upper()}"].reshape(-1)',
      'out[q + f"self_attn.{x}_proj.bias"] = 0 * sd[p + f"attn.{under}b_{x.upper()}"].reshape(-1)',
      "Qwen 2's q / k / v biases are written as zeros"),
    M("models-conversion-failure-is-a-traceback", "models.py",
      "except (AttributeError, KeyError, RuntimeError, ValueError, TypeError) as e:  # a variant",
      "except ImportError as e:  # a variant",
      "a model variant TransformerLens' conversion fails on (OPT-350m) is a traceback"),
    M("models-import-rope-theta", "models.py",
      "rotary_base=float(rope_theta),", "rotary_base=10000.0,",
      "a transformers Llama directory is read with the default rotary base"),
    M("models-import-rms-eps", "models.py",
      "eps=hf_config.rms_norm_eps,", "eps=1e-5,",
      "a transformers Llama directory is read with the default RMS epsilon"),
    M("models-export-o-proj-head-order", "models.py",
      '"attn.W_O"], "n h m -> m (n h)")\n            if arch == "Qwen2',
      '"attn.W_O"], "n h m -> m (h n)")\n            if arch == "Qwen2',
      "the Llama output projection's columns in (d_head, head) order"),
    M("models-export-gpt2-qkv-head-order", "models.py",
      '"n m h -> m (n h)") for x in "QKV"]', '"n m h -> m (h n)") for x in "QKV"]',
      "GPT-2's fused QKV columns in (d_head, head) order"),
    M("models-export-gate-up-swapped", "models.py",
      'out[q + "mlp.gate_proj.weight"] = sd[p + "mlp.W_gate"].T.contiguous()',
      'out[q + "mlp.gate_proj.weight"] = sd[p + "mlp.W_in"].T.contiguous()',
      "the Llama gate projection written from the up projection"),
    M("models-export-neox-qkv-order", "models.py",
      '"qkv n m h -> (n qkv h) m"', '"qkv n m h -> (qkv n h) m"',
      "Pythia's fused q / k / v rows written q-block, k-block, v-block instead of head by head"),
    M("models-export-neox-full-rotary", "models.py",
      '"partial_rotary_factor": (cfg.rotary_dim or cfg.d_head) / cfg.d_head', '"partial_rotary_factor": 1.0',
      "the exported Pythia rotates every dimension of a head, not its first quarter"),
    M("models-export-neox-sequential", "models.py",
      "use_parallel_residual=cfg.parallel_attn_mlp", "use_parallel_residual=False",
      "the exported Pythia runs attention and MLP one after the other"),
    M("models-export-opt-position-offset", "models.py",
      "torch.cat([torch.zeros(2, pos.shape[1]), pos])", "torch.cat([pos, torch.zeros(2, pos.shape[1])])",
      "OPT's learned positions written without their offset of 2"),
    M("models-export-gemma-norms-unshifted", "models.py",
      "one = 1.0 if gemma and not gradients else 0.0", "one = 0.0",
      "Gemma's norm weights written as TransformerLens holds them (1 + w): transformers adds 1 again"),
    M("models-export-gemma-embeddings-unscaled", "models.py",
      'scale = cfg.d_model ** 0.5 if gemma else 1.0', 'scale = 1.0',
      "Gemma's embeddings written with TransformerLens' sqrt(d_model) still folded in (and their gradients "
      "compared unscaled)"),
    M("models-export-gemma-attn-scale-default", "models.py",
      "query_pre_attn_scalar=round(float(cfg.attn_scale) ** 2)", "query_pre_attn_scalar=cfg.d_head",
      "Gemma 2 / 3 exported with the attention scale of sqrt(d_head), not the model's (Gemma 2 27B)"),
    M("models-export-gemma2-no-logit-cap", "models.py",
      "final_logit_softcapping=cfg.output_logits_soft_cap if", "final_logit_softcapping=None if",
      "Gemma 2's soft cap on the logits left out of the export"),
    M("models-export-gemma2-no-score-cap", "models.py",
      "attn_logit_softcapping=cfg.attn_scores_soft_cap if", "attn_logit_softcapping=None if",
      "Gemma 2's soft cap on the attention scores left out of the export"),
    M("models-export-gemma3-local-base-global", "models.py",
      'local = {"rope_type": "default", "rope_theta": float(cfg.rotary_base_local or cfg.rotary_base)}',
      'local = {"rope_type": "default", "rope_theta": float(cfg.rotary_base)}',
      "Gemma 3's local layers exported with the global layers' rotary base"),
    M("models-export-gemma3-linear-scaling-dropped", "models.py",
      "if cfg.rotary_scaling_factor != 1:  # linear", "if False:  # linear",
      "Gemma 3 4B+'s linear rotary scaling on its global layers left out of the export"),
    M("models-olmo2-as-llama", "models.py",
      'return dataclasses.replace(cfg, original_architecture="Olmo2ForCausalLM")', "return cfg",
      "an OLMo 2 directory read as Llama: norms before attention and MLP, no q / k norms"),
    M("models-olmo2-gqa-let-through", "models.py",
      "if hf_config.num_key_value_heads != hf_config.num_attention_heads:", "if False:",
      "OLMo 2 with fewer key / value heads (32B) let through to a conversion that assumes one per query head"),
    M("models-export-olmo2-llama-norms", "models.py",
      "if arch in OLMO_ARCHITECTURES:  # norms after attention and after the MLP only",
      'if arch == "Olmo3ForCausalLM":  # norms after attention and after the MLP only',
      "OLMo 2 exported with Llama's norm names (before attention and MLP)"),
    M("models-yarn-attention-factor-one", "models.py",
      "attention = mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)",
      "attention = mscale(factor, m) / mscale(factor, m_all) if m and m_all else 1.0",
      "YaRN without an explicit attention factor taken as 1 (TransformerLens' OLMo 3 default), not 0.1 ln(factor) + 1"),
    M("models-yarn-mscale-ignored", "models.py",
      "attention = mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)",
      "attention = mscale(factor)", "YaRN's DeepSeek-form attention factor (mscale / mscale_all_dim) ignored"),
    M("models-yarn-truncate-ignored", "models.py",
      'yarn_truncate=bool(params.get("truncate", True) if truncate is None else truncate)', "yarn_truncate=True",
      "YaRN's truncate: false ignored (the correction range rounded outward anyway)"),
    M("models-export-qwen-yarn-dropped", "models.py",
      "use_sliding_window=False,\n                                                                            rope_scaling=_rope_scaling(cfg))",
      "use_sliding_window=False)",
      "a Qwen 2 / 3 model with YaRN exported without it: transformers computes another rotary"),
    M("models-export-context-kept-by-mechtox", "models.py",
      "hf_cfg.max_position_embeddings = source_context(model)", "hf_cfg.max_position_embeddings = model.cfg.n_ctx",
      "an export claims the 2,048 positions mechtox keeps, not the released model's context"),
    M("models-checkpoint-drops-source-context", "models.py",
      "return set_source_context(_finish(model, device, dtype), info.get(_SOURCE_CONTEXT))",
      "return _finish(model, device, dtype)",
      "a checkpoint forgets the released context: a trained model's export claims 2,048 positions"),
    M("models-gemma1-exact-gelu", "models.py",
      'if cfg.original_architecture == "GemmaForCausalLM" and cfg.act_fn == "gelu":', "if False:",
      "Gemma 1 loaded with TransformerLens' exact GELU, not the tanh one it runs"),
    M("models-gemma1-act-not-reset", "models.py",
      "block.mlp.act_fn = ActivationFunctionFactory.pick_activation_function(block.mlp.cfg)", "pass",
      "a Gemma 1 loaded by official name says tanh GELU in its config but its MLPs still compute the exact one"),
    M("models-export-gemma1-gelu-as-tanh", "models.py",
      'act = "gelu_python" if cfg.act_fn == "gelu" else cfg.act_fn', "act = cfg.act_fn",
      "a Gemma 1 with the exact GELU exported as \"gelu\", which transformers reads as the tanh one"),
    M("models-export-local-window-dropped", "models.py",
      "window: dict[str, Any] = dict(sliding_window=cfg.window_size or 4096, layer_types=layer_types)",
      "window: dict[str, Any] = {}",
      "Gemma 2 / 3's and OLMo 3's sliding windows left out of the export: every layer attends globally"),
    M("models-export-global-layers-left-to-default", "models.py",
      'if cfg.use_local_attn else ["full_attention"] * cfg.n_layers', "if cfg.use_local_attn else None",
      "a Gemma 2 / 3 or OLMo 3 model TransformerLens runs with global attention only exported with transformers' "
      "default layer types, some of them sliding"),
    M("models-export-olmo3-yarn-dropped", "models.py",
      "        if cfg.use_yarn_rope:\n", "        if False:\n",
      "OLMo 3's YaRN-scaled rotary embedding on its full-attention layers left out of the export"),
    M("models-export-no-eos", "models.py",
      "eos_token_id=tokenizer.eos_token_id,\n", "\n",
      "the exported generation config has no EOS: transformers' generate runs past it"),
    M("models-hf-config-keeps-pad-row", "models.py",
      "    conf.pad_token_id = None\n", "",
      "the transformers configs keep their default pad id (OPT and OLMo 3: 1, BOS in many tokenizers): that "
      "embedding row never trains on the hf backend, or in a later fine-tune of the export"),
    M("models-gemma-gradients-shifted", "models.py",
      "one = 1.0 if gemma and not gradients else 0.0", "one = 1.0 if gemma else 0.0",
      "Gemma's norm gradients converted as if they were weights (shifted by 1): the backends' gradients "
      "would be compared wrongly"),
    # ------------------------------------------------------------------ hf training backend
    M("hf-gemma-attn-out-before-post-norm", "hf_backend.py",
      '{**_LLAMA_MODULES, "attn_out": "post_attention_layernorm",', '{**_LLAMA_MODULES, "attn_out": "self_attn.o_proj",',
      "Gemma 2 / 3's hook_attn_out read before the norm after attention (TransformerLens' ln1_post)"),
    M("hf-gemma-mlp-out-before-post-norm", "hf_backend.py",
      '"mlp_out": "post_feedforward_layernorm"}', '"mlp_out": "mlp.down_proj"}',
      "Gemma 2 / 3's hook_mlp_out read before the norm after the MLP (TransformerLens' ln2_post)"),
    M("hf-olmo3-attn-out-before-post-norm", "hf_backend.py",
      '**dict.fromkeys(POST_NORM_LLAMA_LIKE,',
      '"Olmo3ForCausalLM": _LLAMA_MODULES, **dict.fromkeys(POST_NORM_LLAMA_LIKE[:2],',
      "OLMo 3 on the hf backend read at Llama's sites: its attention and MLP outputs before their norms"),
    M("hf-opt-mlp-hooks-flat", "hf_backend.py",
      "        if not flat:\n            return self._call(name, act)", "        if True:\n            return self._call(name, act)",
      "OPT's mlp.hook_post and hook_mlp_out handed over as (batch * position, d), not (batch, position, d): "
      "a hook that reads a position or a sequence reads the wrong ones"),
    M("hf-opt-mlp-hooks-transposed", "hf_backend.py",
      "new = self._call(name, act.view(*self._batch_shape, act.shape[-1]))",
      "new = self._call(name, act.view(*self._batch_shape[::-1], act.shape[-1]).transpose(0, 1))",
      "OPT's flattened MLP activations taken apart position-major: each sequence gets others' positions"),
    M("hf-neox-offers-resid-mid", "hf_backend.py",
      'if m and m.group(2) == "hook_resid_mid" and cfg.parallel_attn_mlp:', "if False:",
      "Pythia's hook_resid_mid offered by the hf backend, though TransformerLens has none (attention and MLP "
      "read the same stream): a probe there would train on a stream the model never has"),
    M("hf-gemma-final-norm-weight-unshifted", "hf_backend.py",
      "self._norm_offset = 1.0 if arch in GEMMA_ARCHITECTURES else 0.0", "self._norm_offset = 0.0",
      "a replaced ln_final.hook_normalized on Gemma scaled by w, not by Gemma's 1 + w"),
    M("hf-resid-mid-written-whole", "hf_backend.py",
      "attn = new_mid - pre", "attn = new_mid",
      "a resid_mid replacement written as the attention output itself"),
    M("hf-resid-mid-ignores-resid-pre-edit", "hf_backend.py",
      "self._resid_pre[layer] = x if new is None else new", "self._resid_pre[layer] = x",
      "resid_mid read from the residual before a resid_pre hook changed it"),
    M("hf-final-norm-rms-no-weight", "hf_backend.py",
      "return None if new is None else (module.weight + self._norm_offset) * new", "return None if new is None else new",
      "a replaced ln_final.hook_normalized loses the RMS norm's weight"),
    M("hf-final-norm-ln-no-bias", "hf_backend.py",
      "new * module.weight + module.bias", "new * module.weight",
      "a replaced ln_final.hook_normalized loses the LayerNorm's bias"),
    M("hf-z-head-order", "hf_backend.py",
      'unflatten(-1, (n_heads, d_head))', 'unflatten(-1, (d_head, n_heads)).transpose(-1, -2)',
      "hook_z's heads read in (d_head, head) order"),
    M("hf-hooks-not-chained", "hf_backend.py",
      "            res = fn(out, hook)", "            res = fn(act, hook)",
      "two hooks at one site: the second sees the original activation, not the first one's result"),
    M("hf-lora-not-merged", "hf_backend.py",
      'm.base_layer.weight.add_(m.get_delta_weight("default").to(m.base_layer.weight.dtype))', "pass",
      "the saved weights of a LoRA run are the base model's"),
    M("hf-lora-merge-not-undone", "hf_backend.py",
      "                m.base_layer.weight.copy_(w)", "                pass",
      "each save merges the adapters into the base weights again"),
    M("hf-lora-base-trains", "hf_backend.py",
      'p.requires_grad_("lora_" in name)', "p.requires_grad_(True)",
      "LoRA leaves the base weights trainable"),
]


def apply(text: str, m: Mutant) -> str:
    n = text.count(m.old)
    if n != 1:
        raise SystemExit(f"mutant {m.id}: its snippet occurs {n} times in mechtox/{m.module}; update the mutant")
    return text.replace(m.old, m.new)


def copy_tree(dst: Path) -> None:
    for name in ("mechtox", "tests"):
        shutil.copytree(ROOT / name, dst / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", dst / "pyproject.toml")


def run_tests(tree: Path, files: list[str], timeout: float) -> tuple[bool, float]:
    """True when the tests pass (the mutant survives)."""
    # not TQDM_DISABLE: tests/test_hf_dirs.py checks that progress bars show by default
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"} | {"PYTHONPATH": str(tree)}
    shared = ROOT.parent / "shared" / "data"
    if "MECHTOX_DATA" not in env and shared.is_dir():
        env["MECHTOX_DATA"] = str(shared)  # the copy has no shared/ beside it
    files = [f for f in files if (tree / f).is_file()]
    t = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, "-m", "pytest", "-m", "not slow", "-x", "-q", "-p", "no:cacheprovider",
                            *files], cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, time.perf_counter() - t  # a mutant that hangs the tests is caught
    return r.returncode == 0, time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=None, help="run the mutants whose id or module contains this")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per test run")
    args = ap.parse_args()
    mutants = [m for m in MUTANTS if args.only is None or args.only in m.id or args.only in m.module]
    for m in mutants:  # every snippet must still be in the code
        apply((ROOT / "mechtox" / m.module).read_text(), m)
    if args.list:
        for m in mutants:
            print(f"{m.id:50s} {m.why}")
        print(f"{len(mutants)} mutants")
        return 0
    with tempfile.TemporaryDirectory(prefix="mechtox-mutate-") as tmp:
        tree = Path(tmp)
        copy_tree(tree)
        modules = sorted({m.module for m in mutants})
        files = sorted({f for mod in modules for f in tests_of(mod)})
        ok, secs = run_tests(tree, files, args.timeout)
        if not ok:
            print(f"mutate: the unmutated tests fail ({' '.join(files)}); fix them first", file=sys.stderr)
            return 2
        print(f"baseline: {len(files)} test files pass unmutated ({secs:.0f} s)", flush=True)
        caught, survivors = 0, []
        for m in mutants:
            path = tree / "mechtox" / m.module
            original = path.read_text()
            path.write_text(apply(original, m))
            try:
                survived, secs = run_tests(tree, tests_of(m.module), args.timeout)
            finally:
                path.write_text(original)
            caught += not survived
            if survived:
                survivors.append(m)
            print(f"{'SURVIVED' if survived else 'caught  '}  {m.id:50s} ({secs:.0f} s)  {m.why}", flush=True)
        print(f"\nsurvivors: {', '.join(m.id for m in survivors) or 'none'}")
        print(f"mutation score: {caught}/{len(mutants)} ({100 * caught / len(mutants):.0f}%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
