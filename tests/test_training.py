import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mechtox.data import PreferencePairs
from mechtox.errors import MechtoxError
from mechtox.training import (
    DPOObjective,
    ProbeSFTObjective,
    SAPObjective,
    SFTObjective,
    TrainConfig,
    build_sequences,
    collate,
    completion_logits,
    dpo_loss,
    rank_pairs_by_probe,
    safety_loss,
    sap_layers,
    sequence_logps,
    token_logps,
    train,
)


def pairs(n=16):
    rng = np.random.default_rng(0)
    good = ["thanks for the help", "nice book", "good music", "you are kind", "great work friend"]
    bad = ["you stupid idiot", "shut up loser", "ugly jerk", "dumb moron trash", "hate you fool"]
    prompts = ["the city is", "you are", "my friend said", "the team"]
    return PreferencePairs([prompts[i % 4] for i in range(n)], [" " + good[rng.integers(5)] for _ in range(n)],
                           [" " + bad[rng.integers(5)] for _ in range(n)], "synthetic")


def test_dpo_loss_matches_direct_implementation():
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(32, generator=g) * 5 for _ in range(4))
    loss, m = dpo_loss(pc, pr, rc, rr, beta=0.1)
    logits = 0.1 * ((pc - rc) - (pr - rr))
    ref = torch.mean(-torch.log(torch.sigmoid(logits)))
    assert float(loss) == pytest.approx(float(ref), rel=1e-6)
    assert m["rewards/margins"] == pytest.approx(float((0.1 * (pc - rc) - 0.1 * (pr - rr)).mean()), rel=1e-5)
    assert m["rewards/accuracies"] == pytest.approx(float((logits > 0).float().mean()))


def test_first_step_loss_is_ln2(tiny):
    cfg = TrainConfig(batch_size=4, max_steps=1)
    obj = DPOObjective(tiny, pairs(8), cfg)
    obj.prepare(tiny, progress=False)
    loss, m = obj.loss(tiny, [0, 1, 2, 3])
    assert float(loss.detach()) == pytest.approx(math.log(2), abs=1e-6)
    assert m["rewards/chosen"] == pytest.approx(0.0, abs=1e-6)


def test_sequence_logps_counts_only_completion_tokens(tiny):
    seqs = build_sequences(tiny, ["the city is"], [" good day"], 32, 32)
    (ids, plen), = seqs
    assert plen == 3 and len(ids) == 5
    # pad id 0 equal to a real token must not matter: masks come from lengths
    batch = collate(seqs + [(ids[:4], plen)], pid=ids[-1])
    with torch.no_grad():
        logits = tiny(batch.tokens, attention_mask=batch.attention_mask)
        full = F.log_softmax(tiny(torch.tensor([ids])), -1)[0]
    lp = sequence_logps(logits, batch)
    ref = full[2, ids[3]] + full[3, ids[4]]
    assert float(lp[0]) == pytest.approx(float(ref), abs=1e-5)
    assert float(lp[1]) == pytest.approx(float(full[2, ids[3]]), abs=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_token_logps_value_and_gradient_match_autograd_log_softmax(dtype):
    g = torch.Generator().manual_seed(3)
    logits = (4 * torch.randn(2, 5, 97, generator=g)).to(dtype).requires_grad_()
    target = torch.randint(0, 97, (2, 5), generator=g)
    w = torch.randn(2, 5, generator=g)
    mine = token_logps(logits, target)
    (gm,) = torch.autograd.grad((mine * w).sum(), logits)
    ref = logits.float().log_softmax(-1).gather(-1, target[..., None])[..., 0]
    (gr,) = torch.autograd.grad((ref * w).sum(), logits)
    assert mine.dtype == torch.float32 and gm.dtype == dtype
    assert torch.allclose(mine, ref, atol=1e-5)
    assert torch.allclose(gm.float(), gr.float(), atol=1e-6 if dtype == torch.float32 else 1e-2)


def test_sequence_logps_needs_only_the_logits_from_the_first_completion_position(tiny):
    seqs = build_sequences(tiny, ["the city is very big and", "my friend said"], [" good day", " you are kind to me"], 32, 32)
    batch = collate(seqs, pid=0)
    assert batch.start == min(p for _, p in seqs) - 1 > 0
    with torch.no_grad():
        full = tiny(batch.tokens, attention_mask=batch.attention_mask)
    assert completion_logits(tiny, batch).shape == full.shape  # a HookedTransformer gives every position
    ref = sequence_logps(full, batch)
    assert torch.allclose(sequence_logps(full[:, batch.start:], batch), ref, atol=1e-6)
    assert torch.allclose(sequence_logps(full[:, 1:], batch), ref, atol=1e-6)
    with pytest.raises(ValueError, match="after the first completion label"):
        sequence_logps(full[:, batch.start + 1:], batch)


def test_short_run_lowers_loss_and_writes_metrics(tiny, tmp_path):
    cfg = TrainConfig(lr=1e-3, batch_size=4, max_steps=12, warmup_steps=2, eval_every=4, checkpoint_every=6)
    obj = DPOObjective(tiny, pairs(16), cfg)
    res = train(tiny, obj, cfg, tmp_path / "run", progress=False)
    assert res.steps == 12
    first, last = res.history[0]["loss"], np.mean([h["loss"] for h in res.history[-3:]])
    assert first == pytest.approx(math.log(2), abs=1e-5) and last < 0.5 * first
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 12 and "rewards/margins" in lines[0]
    assert [v["step"] for v in res.val_history] == [4, 8, 12]
    line = repr(res)  # a notebook shows one line, not the history
    assert "\n" not in line and line.startswith(f"TrainResult(12 steps in {res.seconds:.1f} s, ")
    assert f"best validation loss {res.best_val:.4g}; {tmp_path / 'run'})" in line


def test_resume_after_interruption_gives_identical_weights(tmp_path):
    from mechtox.models import tiny_model

    cfg = TrainConfig(lr=1e-3, batch_size=3, grad_accum=2, max_steps=8, warmup_steps=3, eval_every=2,
                      checkpoint_every=3)
    a = tiny_model()
    train(a, DPOObjective(a, pairs(14), cfg), cfg, tmp_path / "a", progress=False)
    b = tiny_model()
    train(b, DPOObjective(b, pairs(14), cfg), cfg, tmp_path / "b", progress=False, stop_after=4)  # killed after step 4
    # the last checkpoint is at step 3: a fresh process resumes from there
    c = tiny_model()
    res = train(c, DPOObjective(c, pairs(14), cfg), cfg, tmp_path / "b", resume=True, progress=False)
    assert res.steps == 8
    for (k, va), vc in zip(a.state_dict().items(), c.state_dict().values(), strict=True):
        assert torch.equal(va, vc), k


def test_a_run_without_a_folder_writes_nothing_and_trains_as_one_with_checkpoints(tmp_path, monkeypatch):
    """``out_dir=None`` (a notebook's quick run): the same weights and history as a run that writes
    a checkpoint every step (and restores nothing between them), and not a file written anywhere."""
    from mechtox.models import tiny_model

    cfg = TrainConfig(lr=1e-3, batch_size=3, max_steps=4, warmup_steps=1, eval_every=2, checkpoint_every=1)
    a = tiny_model()
    with_dir = train(a, DPOObjective(a, pairs(10), cfg), cfg, tmp_path / "a", progress=False)
    assert (tmp_path / "a" / "state" / "trainer.json").is_file()
    b = tiny_model()
    monkeypatch.chdir(tmp_path / "a")  # a relative path written by mistake would land here
    before = sorted(tmp_path.rglob("*"))
    res = train(b, DPOObjective(b, pairs(10), cfg), cfg, None, progress=False)
    assert sorted(tmp_path.rglob("*")) == before
    assert res.out_dir is None and repr(res).endswith("; no checkpoints)")
    assert [h["loss"] for h in res.history] == [h["loss"] for h in with_dir.history] and res.steps == 4
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    with pytest.raises(MechtoxError, match="give the out_dir of the run to continue"):
        train(b, DPOObjective(b, pairs(10), cfg), cfg, None, resume=True, progress=False)


def test_resume_errors(tiny, tmp_path):
    cfg = TrainConfig(batch_size=4, max_steps=2)
    with pytest.raises(MechtoxError, match="nothing to resume"):
        train(tiny, DPOObjective(tiny, pairs(8), cfg), cfg, tmp_path / "x", resume=True, progress=False)
    train(tiny, DPOObjective(tiny, pairs(8), cfg), cfg, tmp_path / "y", progress=False)
    with pytest.raises(MechtoxError, match="already holds a training run"):
        train(tiny, DPOObjective(tiny, pairs(8), cfg), cfg, tmp_path / "y", progress=False)
    other = TrainConfig(batch_size=4, max_steps=2, lr=1e-3)
    with pytest.raises(MechtoxError, match="config differs in \\['lr'\\]"):
        train(tiny, DPOObjective(tiny, pairs(8), other), other, tmp_path / "y", resume=True, progress=False)
    longer = TrainConfig(batch_size=4, max_steps=3)  # extending a finished run is allowed
    assert train(tiny, DPOObjective(tiny, pairs(8), longer), longer, tmp_path / "y", resume=True, progress=False).steps == 3
    # other pairs of the same number (regenerated since): the saved reference log-probs are theirs no more
    p = pairs(8)
    swapped = PreferencePairs(p.prompt, p.rejected, p.chosen, "swapped")
    with pytest.raises(MechtoxError, match="it trained on other data"):
        train(tiny, DPOObjective(tiny, swapped, longer), longer, tmp_path / "y", resume=True, progress=False)
    with pytest.raises(MechtoxError, match="it trained on other data"):
        train(tiny, DPOObjective(tiny, pairs(9), longer), longer, tmp_path / "y", resume=True, progress=False)


@pytest.mark.parametrize(("damage", "match"), [
    (lambda d: (d / "trainer.json").write_text("{"), r"state/trainer.json is missing or damaged \(JSONDecodeError"),
    (lambda d: (d / "trainer.json").write_text('{"step": 2}'), "state/trainer.json lacks the loop state"),
    (lambda d: (d / "weights.safetensors").write_bytes(b"\x08" * 40), r"weights.safetensors is missing or damaged \(Safet"),
    (lambda d: (d / "optimizer.pt").unlink(), r"state/optimizer.pt is missing or damaged \(FileNotFoundError"),
    (lambda d: (d / "scheduler.pt").write_bytes((d / "scheduler.pt").read_bytes()[:100]),
     r"scheduler.pt is missing or damaged \(RuntimeError: PytorchStreamReader failed reading zip archive: failed finding "
     r"central directory\); delete .* to start over, or choose another --out$"),
    (lambda d: (d / "reference.pt").write_bytes(b"junk"), "state/reference.pt is missing or damaged"),
])
def test_resume_from_a_damaged_checkpoint_says_which_file_and_what_to_do(tiny, tmp_path, damage, match):
    """Each was a raw JSONDecodeError, KeyError, SafetensorError or torch RuntimeError (or, for a
    missing file, a bare 'No such file or directory')."""
    cfg = TrainConfig(batch_size=4, max_steps=2)
    train(tiny, DPOObjective(tiny, pairs(8), cfg), cfg, tmp_path / "y", progress=False)
    damage(tmp_path / "y" / "state")
    with pytest.raises(MechtoxError, match=match) as e:
        train(tiny, DPOObjective(tiny, pairs(8), cfg), cfg, tmp_path / "y", resume=True, progress=False)
    assert "\n" not in str(e.value) and f"cannot resume {tmp_path / 'y'}" in str(e.value)


def test_pairs_whose_sides_are_the_same_tokens(tiny, tmp_path, capsys):
    """Pairs whose chosen and rejected are the same tokens as trained give DPO no gradient: all of
    them is an error before any step (the loss had stayed at log 2), some of them a note. Different
    texts that share their first max_completion_tokens tokens count as the same."""
    from mechtox.cli import main

    same = PreferencePairs(["you are"] * 3, [" kind", " kind friend", " kind thanks"], [" kind", " kind loser", " kind"],
                           "by hand")
    with pytest.raises(MechtoxError, match="every pair's chosen and rejected are the same tokens .completions cut to 1 "):
        DPOObjective(tiny, same, TrainConfig(max_completion_tokens=1))
    assert DPOObjective(tiny, same, TrainConfig()).n_identical == 1
    f = tmp_path / "p.jsonl"
    f.write_text("".join(f'{{"prompt": "{p}", "chosen": "{c}", "rejected": "{r}"}}\n'
                         for p, c, r in zip(same.prompt, same.chosen, same.rejected, strict=True)))
    assert main(["train", "dpo", "-w", str(tmp_path / "ws"), "-q", "--model", "tiny", "--pairs", str(f),
                 "--steps", "1", "--batch-size", "2"]) == 0
    assert "note: 1 of the 3 pairs have the same chosen and rejected tokens" in capsys.readouterr().out


@pytest.mark.parametrize("n", [2, 7, 40, 333])
@pytest.mark.parametrize("frac", [0.0, 0.1, 0.25])
def test_grouped_split_of_distinct_examples_is_the_plain_split(n, frac):
    """Keeping repeats together must not move any example of a set without repeats."""
    from mechtox.training import _grouped_split, _split_examples

    for seed in (0, 3):
        cfg = TrainConfig(val_fraction=frac, seed=seed)
        assert _grouped_split(n, cfg, list(range(n))) == _split_examples(n, cfg, None, None)


def test_repeated_examples_stay_on_one_side_of_the_validation_split(tiny, tmp_path, capsys):
    """A pair set with repeats (a scraped file, a pair written twice) was split at random: copies of
    one pair landed in training and validation, and the validation loss measured what the model was
    trained on. Repeats (the same tokens) now stay together; every example without repeats keeps its side."""
    from mechtox.cli import main
    from mechtox.training import _split

    rng = np.random.default_rng(0)
    words = [" friend", " kind", " nice", " idiot", " loser", " jerk", " trash", " moron"]
    pick = rng.integers(0, len(words), size=(60, 2))
    pairs = PreferencePairs(["you are"] * 60, [words[a] for a, _ in pick], [words[b] + " !" for _, b in pick], "by hand")
    keys = DPOObjective(tiny, pairs, TrainConfig()).example_keys()
    assert len(set(keys)) == len({(c, r) for c, r in zip(pairs.chosen, pairs.rejected, strict=True)}) < 60
    for frac in (0.1, 0.3):
        tr, va = _split(60, TrainConfig(val_fraction=frac), None, None, keys)
        assert sorted(tr + va) == list(range(60)) and va and tr
        assert not {keys[i] for i in tr} & {keys[i] for i in va}
        assert abs(len(va) - round(frac * 60)) <= max(keys.count(k) for k in keys)
    plain = _split(60, TrainConfig(), None, None)
    assert _split(60, TrainConfig(), None, None, list(range(60))) == plain
    # every pair the same: nothing to hold out, said so, and no infinite loss written as JSON
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "you are", "chosen": " kind", "rejected": " loser"}\n' * 12)
    assert main(["train", "dpo", "-w", str(tmp_path / "ws"), "-q", "--model", "tiny", "--pairs", str(f),
                 "--steps", "1", "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "note: 11 of the 12 examples repeat others" in out and "(0 validation examples)" in out
    assert "no validation examples" in out and "best val inf" not in out
    info = json.loads((tmp_path / "ws" / "models" / "dpo" / "config.json").read_text())
    assert info["best_val_loss"] is None


def test_probe_sft_lowers_probe_score(tiny, tmp_path):
    from mechtox.activations import collect_activations
    from mechtox.probe import fit_probe

    p = pairs(24)
    texts = p.chosen + p.rejected
    h = "blocks.1.hook_resid_post"
    acts = collect_activations(tiny, texts, [h], progress=False)[h]
    probe = fit_probe(acts, np.array([0] * 24 + [1] * 24), h)
    cfg = TrainConfig(objective="sft-probe", lr=1e-3, batch_size=8, max_steps=15, warmup_steps=1, eval_every=0,
                      probe_lambda=5.0, val_fraction=0.0)
    obj = ProbeSFTObjective(tiny, p.prompt, p.chosen, [probe], cfg)
    res = train(tiny, obj, cfg, tmp_path / "sft", progress=False)
    first, last = res.history[0]["probe_score"], res.history[-1]["probe_score"]
    assert last < 0.5 * first


def test_rank_pairs_by_probe():
    p = PreferencePairs(["a", "b"], [" x", " yy"], [" yyy", " z"], "s")

    class LenScorer:
        name = "len"

        def __call__(self, texts):
            return np.array([len(t) for t in texts], dtype=float)

    ranked, swapped = rank_pairs_by_probe(p, LenScorer())
    assert swapped == 1 and ranked.chosen == [" x", " z"] and ranked.rejected == [" yyy", " yy"]


def test_config_validation():
    with pytest.raises(MechtoxError, match="TrainConfig.optimizer must be one of 'adamw', 'rmsprop', not 'sgd'"):
        TrainConfig(optimizer="sgd")
    with pytest.raises(MechtoxError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(MechtoxError, match="sap_temperature"):
        TrainConfig(objective="sap", sap_temperature=0.0)


def test_early_stopping_after_patience_evaluations_without_improvement(tiny, tmp_path, monkeypatch):
    """Validation losses 1.0, 0.9, 0.95, 0.97 with patience 2: the run stops after step 4 with the
    best at 0.9, and its checkpoint is written there. Early stopping had no test; with no
    validation examples every loss was NaN and it stopped after `patience` evaluations, silently."""
    import mechtox.training as T

    losses = iter([1.0, 0.9, 0.95, 0.97, 0.5, 0.4])
    monkeypatch.setattr(T, "_validation_loss", lambda *a, **k: next(losses))
    cfg = TrainConfig(lr=1e-3, batch_size=4, max_steps=10, eval_every=1, patience=2, checkpoint_every=100)
    res = train(tiny, DPOObjective(tiny, pairs(12), cfg), cfg, tmp_path / "run", progress=False)
    assert (res.steps, res.stopped_early, res.best_val) == (4, True, 0.9)
    assert [v["val_loss"] for v in res.val_history] == [1.0, 0.9, 0.95, 0.97]
    assert json.loads((tmp_path / "run" / "state" / "trainer.json").read_text())["step"] == 4
    with pytest.raises(MechtoxError, match="patience 2 stops on the validation loss, which eval_every 0 computes"):
        TrainConfig(eval_every=0, patience=2)
    no_val = TrainConfig(lr=1e-3, batch_size=4, max_steps=10, eval_every=1, patience=2, val_fraction=0.0)
    with pytest.raises(MechtoxError, match="patience 2 stops on the validation loss, and there are no validation"):
        train(tiny, DPOObjective(tiny, pairs(12), no_val), no_val, tmp_path / "none", progress=False)


def test_probe_goodhart_table(tiny):
    import copy

    from mechtox.activations import collect_activations
    from mechtox.data import LabelledTexts
    from mechtox.probe import fit_probe
    from mechtox.training import probe_goodhart

    from .conftest import synthetic_labelled

    data = synthetic_labelled(80, seed=4)  # (pairs' ten distinct texts left nothing held out but repeats)
    h = "blocks.1.hook_resid_post"
    acts = collect_activations(tiny, data.texts, [h], progress=False)[h]
    probe = fit_probe(acts, data.labels, h, name="p")
    held = fit_probe(acts, data.labels, "blocks.1.hook_resid_post", method="diffmean", name="h")
    same = probe_goodhart(tiny, copy.deepcopy(tiny), [probe], data, held_out=[held], progress=False)
    assert list(same["role"]) == ["trained against", "held out"]
    # an unchanged model: the probe keeps its accuracy exactly
    assert (same["acc_before"] == same["acc_after"]).all()
    other = copy.deepcopy(tiny)
    with torch.no_grad():
        other.blocks[1].mlp.W_out.mul_(-3.0)
    changed = probe_goodhart(tiny, other, [probe], data, progress=False)
    assert changed["acc_after"].iloc[0] != changed["acc_before"].iloc[0]
    assert 0 <= changed["acc_retrained"].iloc[0] <= 1
    # every text twice: a held-out copy of a training text is left out, as a probe sweep leaves it out
    from mechtox.probe import split_indices

    twice = LabelledTexts(data.texts * 2, np.tile(data.labels, 2), "twice")
    tr, te = split_indices(twice.labels, 0.25, 0)
    fitted = {twice.texts[i] for i in tr}
    te = np.array([i for i in te if twice.texts[i] not in fitted])
    assert 0 < len(te) < 40
    acts2 = torch.cat([acts, acts])
    want = ((probe.logits(acts2[te]) > 0).numpy() == twice.labels[te]).mean()
    assert probe_goodhart(tiny, other, [probe], twice, progress=False)["acc_before"].iloc[0] == pytest.approx(want)


def test_sft_lowers_lm_loss(tiny, tmp_path):
    p = pairs(24)
    cfg = TrainConfig(objective="sft", lr=3e-3, batch_size=8, max_steps=10, warmup_steps=1, eval_every=0, val_fraction=0.0)
    res = train(tiny, SFTObjective(tiny, p.prompt, p.chosen, cfg), cfg, tmp_path / "sft", progress=False)
    assert res.history[-1]["lm_loss"] < 0.7 * res.history[0]["lm_loss"]


def test_safety_loss_formula():
    g = torch.Generator().manual_seed(1)
    s, h = torch.randn(16, generator=g) * 4, torch.randn(16, generator=g) * 4
    ref = torch.mean(-torch.log(torch.sigmoid((s - h) / 2.0)))
    assert float(safety_loss(s, h, 2.0)) == pytest.approx(float(ref), rel=1e-6)


def test_sap_layers():
    assert sap_layers("auto", 30) == [3, 8]
    assert sap_layers("auto", 2) == [0, 1]
    assert sap_layers("5, 2", 30) == [2, 5]
    with pytest.raises(MechtoxError, match="blocks 0-29"):
        sap_layers("30", 30)
    with pytest.raises(MechtoxError, match="comma-separated"):
        sap_layers("x", 30)


def test_sap_vectors_follow_the_task_gradient_under_the_harmful_perturbation(tiny):
    """The vector is eps * median|h| * sign of d(task loss)/d(vector) at weights moved along the
    normalised safety-loss gradient by rho * |weights|; the weights come back bit for bit and no
    gradient is left on them."""
    import copy

    p = pairs(8)
    cfg = TrainConfig(objective="sap", batch_size=4, sap_layers="0,1", sap_rho=0.05, sap_eps=0.5)
    obj = SAPObjective(tiny, p.prompt, p.chosen, p, cfg)
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    idx = [0, 1, 2, 3]
    sidx = obj.safety_batch(idx)
    batch = obj._batch(tiny, idx)
    vecs, s_loss = obj.probe_vectors(tiny, batch, sidx)
    for k, v in tiny.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(q.grad is None for q in tiny.parameters())

    # the same computation by hand on a copy
    ref = copy.deepcopy(tiny)
    params = list(ref.parameters())
    loss = obj.safety_loss(ref, sidx)
    assert float(loss.detach()) == pytest.approx(float(s_loss), rel=1e-6)
    grads = torch.autograd.grad(loss, params)
    g_norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
    w_norm = torch.sqrt(sum((q.detach() ** 2).sum() for q in params))
    with torch.no_grad():
        for q, g in zip(params, grads, strict=True):
            q.add_(0.05 * w_norm / g_norm * g)
    zero = {h: torch.zeros(ref.cfg.d_model, requires_grad=True) for h in obj.hooks}
    med = {}

    def add(act, hook):
        med[hook.name] = act.detach()[batch.attention_mask.bool()].abs().median()
        return act + zero[hook.name]

    task = obj.lm_loss(ref, batch, [(h, add) for h in obj.hooks])
    task.backward()
    for h in obj.hooks:
        expected = 0.5 * med[h] * torch.sign(zero[h].grad)
        assert torch.allclose(vecs[h], expected, atol=1e-6), h
        assert vecs[h].abs().sum() > 0


def test_sap_run_lowers_task_loss_and_resumes_exactly(tmp_path):
    from mechtox.models import tiny_model

    p = pairs(20)
    cfg = TrainConfig(objective="sap", lr=3e-3, batch_size=4, max_steps=6, warmup_steps=1, eval_every=3,
                      checkpoint_every=2, sap_layers="0", sap_rho=0.01)
    a = tiny_model()
    res = train(a, SAPObjective(a, p.prompt, p.chosen, p, cfg), cfg, tmp_path / "a", progress=False)
    assert res.history[-1]["lm_loss"] < res.history[0]["lm_loss"]
    assert {"safety_loss", "sap_vector_norm"} <= set(res.history[0])
    b = tiny_model()
    train(b, SAPObjective(b, p.prompt, p.chosen, p, cfg), cfg, tmp_path / "b", progress=False, stop_after=3)
    c = tiny_model()
    train(c, SAPObjective(c, p.prompt, p.chosen, p, cfg), cfg, tmp_path / "b", resume=True, progress=False)
    for (k, va), vc in zip(a.state_dict().items(), c.state_dict().values(), strict=True):
        assert torch.equal(va, vc), k


# ----------------------------------------------------------------------------- conditions


def _unequal_examples():
    prompts = ["the city is very big and", "you", "my friend said that the"]
    targets = [" good", " a stupid idiot and a fool", " thanks for the help"]
    return prompts, targets


def test_sft_loss_is_the_mean_over_target_tokens_of_unequal_examples(rich):
    prompts, targets = _unequal_examples()
    cfg = TrainConfig(objective="sft", max_prompt_tokens=4, max_completion_tokens=8)
    obj = SFTObjective(rich, prompts, targets, cfg)
    loss, _ = obj.loss(rich, [0, 1, 2])
    nll, n = 0.0, 0  # one unpadded pass per example
    for ids, plen in obj.seqs:
        with torch.no_grad():
            lp = F.log_softmax(rich(torch.tensor([ids]))[0], -1)
        for t in range(plen, len(ids)):
            nll -= float(lp[t - 1, ids[t]])
            n += 1
    assert n == sum(len(s) - p for s, p in obj.seqs) and len({len(s) - p for s, p in obj.seqs}) == 3
    assert float(loss.detach()) == pytest.approx(nll / n, rel=1e-5)


def test_long_prompts_keep_the_tokens_next_to_the_completion(tiny):
    from mechtox.data import encode

    (ids, plen), = build_sequences(tiny, ["the city is very big"], [" good"], 2, 32)
    assert plen == 2 and ids[:2] == encode(tiny, ["very big"])[0]


def test_probe_sft_averages_two_probes_over_whole_texts_of_unequal_length(rich):
    from mechtox.probe import fit_probe

    prompts, targets = _unequal_examples()
    rng = np.random.default_rng(0)
    probes = []
    for h in ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post"):
        X = rng.normal(size=(40, rich.cfg.d_model))
        probes.append(fit_probe(X, (X[:, 0] + X[:, 1] > 0).astype(int), h))
    cfg = TrainConfig(objective="sft-probe", probe_lambda=2.0, max_prompt_tokens=6, max_completion_tokens=8)
    obj = ProbeSFTObjective(rich, prompts, targets, probes, cfg)
    loss, m = obj.loss(rich, [0, 1, 2])
    lm = SFTObjective(rich, prompts, targets, cfg).loss(rich, [0, 1, 2])[0]
    scores = []
    for p in probes:  # the probe reads each whole text (prompt + target), alone, mean-pooled
        per_text = []
        for ids, _ in obj.seqs:
            _, cache = rich.run_with_cache(torch.tensor([ids]))
            per_text.append(float(torch.sigmoid(cache[p.hook_name][0].mean(0) @ p.weight + p.bias)))
        scores.append(np.mean(per_text))
    assert m["probe_score"] == pytest.approx(float(np.mean(scores)), rel=1e-5)
    assert float(loss.detach()) == pytest.approx(float(lm.detach()) + 2.0 * float(np.mean(scores)), rel=1e-5)


def test_first_dpo_step_metrics_at_equal_policy_and_reference(tiny):
    cfg = TrainConfig(batch_size=4, max_steps=1)
    obj = DPOObjective(tiny, pairs(8), cfg)
    obj.prepare(tiny, progress=False)
    _, m = obj.loss(tiny, [0, 1, 2, 3])
    assert m["rewards/accuracies"] == 0.0  # TRL counts chosen > rejected strictly: ties are not wins
    assert m["rewards/margins"] == pytest.approx(0.0, abs=1e-6)


def test_gradient_accumulation_equals_one_large_batch(tmp_path):
    from mechtox.models import tiny_model

    runs = {}
    for bs, acc in ((4, 1), (2, 2)):
        m = tiny_model()
        cfg = TrainConfig(lr=1e-3, batch_size=bs, grad_accum=acc, max_steps=2, warmup_steps=1, eval_every=0,
                          val_fraction=0.0, clip=0.0)
        res = train(m, DPOObjective(m, pairs(8), cfg), cfg, tmp_path / f"r{bs}", progress=False)
        runs[bs] = res.history
    # the same examples per step: the averaged gradient (its norm, before clipping) and the loss agree
    # (weights after AdamW are not compared: it amplifies float noise in near-zero gradients)
    for h4, h2 in zip(runs[4], runs[2], strict=True):
        assert h4["grad_norm"] == pytest.approx(h2["grad_norm"], rel=1e-4)
        assert h4["loss"] == pytest.approx(h2["loss"], rel=1e-5)


def test_a_non_finite_loss_stops_the_run_before_its_update(tmp_path):
    """The loop reads the loss once per step, after the backward (one host-device sync); a NaN
    loss must still stop the run before the optimizer applies its NaN gradients."""
    from mechtox.models import tiny_model

    class NaNAtSecondStep(DPOObjective):
        calls = 0

        def loss(self, model, idx):
            loss, metrics = super().loss(model, idx)
            NaNAtSecondStep.calls += 1
            return (loss * float("nan") if NaNAtSecondStep.calls == 2 else loss), metrics

    cfg = TrainConfig(lr=1e-3, batch_size=4, max_steps=3, warmup_steps=0, eval_every=0, val_fraction=0.0,
                      checkpoint_every=10**6)
    one = tiny_model()
    train(one, DPOObjective(one, pairs(8), cfg), dataclasses.replace(cfg, max_steps=1), tmp_path / "one", progress=False)
    m = tiny_model()
    with pytest.raises(MechtoxError, match="the loss became nan at step 1; lower the learning rate"):
        train(m, NaNAtSecondStep(m, pairs(8), cfg), cfg, tmp_path / "nan", progress=False)
    after_one = one.state_dict()
    for k, v in m.state_dict().items():  # trained in place (hooked backend): the first step's weights, no NaN
        assert torch.equal(v, after_one[k]), k


def test_compile_hint_only_for_long_eager_runs_on_a_gpu():
    from mechtox.training import compile_hint

    long = TrainConfig(max_steps=1675)
    assert "--compile" in compile_hint(long, "cuda:0")
    assert compile_hint(long, "cpu") is None
    assert compile_hint(dataclasses.replace(long, compile=True), "cuda") is None
    assert compile_hint(TrainConfig(max_steps=100), "cuda") is None


def test_warmup_gives_the_first_step_a_share_of_the_learning_rate(tmp_path):
    from mechtox.models import tiny_model

    m = tiny_model()
    start = {k: v.clone() for k, v in m.state_dict().items()}
    cfg = TrainConfig(lr=1e-3, batch_size=4, max_steps=1, warmup_steps=4, eval_every=0, val_fraction=0.0)
    res = train(m, DPOObjective(m, pairs(8), cfg), cfg, tmp_path / "w", progress=False)
    assert any(not torch.equal(v, start[k]) for k, v in m.state_dict().items())  # step 1 trains (lr/4)
    assert res.history[0]["lr"] == pytest.approx(2 * 1e-3 / 4)  # the rate set for the next step


def test_sequences_longer_than_the_context_are_cut_to_fit(tiny):
    """Prompt (32 tokens) + completion (32) exceeded the tiny model's context of 32: training failed
    with an IndexError in the position embedding. The prompt keeps its last tokens, the completion
    its first, and an empty prompt's BOS stays."""
    n_ctx = tiny.cfg.n_ctx
    long = " ".join(["idiot", "thanks", "the", "city"] * 20)
    seqs = build_sequences(tiny, [long, "", "you are"], [long, long, " nice"], 32, 32)
    assert all(len(s) <= n_ctx for s, _ in seqs)
    (s0, p0), (s1, p1), (s2, p2) = seqs
    full_c = tiny.to_tokens(long, prepend_bos=False)[0].tolist()
    full_p = tiny.to_tokens(long)[0].tolist()
    assert len(s0) == n_ctx and p0 == 1 and s0 == full_p[-1:] + full_c[: n_ctx - 1]
    (s3, p3), = build_sequences(tiny, [long], [long], 32, 8)  # room for 24 prompt tokens: its last 24
    assert p3 == n_ctx - 8 and s3 == full_p[-p3:] + full_c[:8]
    assert p1 == 1 and s1[0] == tiny.tokenizer.bos_token_id and s1[1:] == full_c[: n_ctx - 1]
    assert len(s2) < n_ctx and s2 == build_sequences(tiny, ["you are"], [" nice"], 32, 4)[0][0]  # short: as before
    seqs = build_sequences(tiny, ["you are"], [long], 32, 64)
    assert len(seqs[0][0]) == n_ctx and seqs[0][1] == 1  # a completion as long as the context keeps one prompt token
    cfg = TrainConfig(batch_size=2, max_steps=1, max_completion_tokens=32)
    obj = DPOObjective(tiny, PreferencePairs([long] * 2, [long] * 2, [" jerk " + long] * 2, "long"), cfg)
    assert torch.isfinite(obj.loss(tiny, [0, 1])[0])
