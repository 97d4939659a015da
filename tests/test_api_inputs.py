"""Bad input to the Python API (what a notebook user passes by hand) is a MechtoxError that says what
to pass, not a silent misfit or an error from deep inside scikit-learn, the tokenizer or torch."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import mechtox as mt
from mechtox.data import LabelledTexts
from mechtox.errors import MechtoxError

HOOK = "blocks.0.hook_resid_post"


@pytest.fixture()
def xy():
    rng = np.random.default_rng(0)
    return rng.normal(size=(40, 16)), np.array([0, 1] * 20)


@pytest.mark.parametrize("change, match", [
    (lambda X, y: (X, y[:30]), "X has 40 rows but there are 30 labels"),
    (lambda X, y: (X[:, :, None], y), "X must be 2-D"),
    (lambda X, y: (X, y * 2), "labels must be 0 or 1"),
    (lambda X, y: (X, np.where(np.arange(40) == 5, np.nan, y)), "labels must be 0 or 1"),
])
def test_fit_probe_refuses_misaligned_or_non_binary_data(xy, change, match):
    X, y = change(*xy)
    with pytest.raises(MechtoxError, match=match):
        mt.fit_probe(X, y, HOOK)


@pytest.mark.parametrize("kw, match", [
    ({"C": -1.0}, "C must be a positive number or 'cv'"),
    ({"C": 0}, "C must be a positive number"),
    ({"C": float("inf")}, "C must be a positive number"),
    ({"C": "auto"}, "C must be a positive number or 'cv'"),
    ({"method": "forest"}, "unknown probe method 'forest'; use logreg, diffmean, svm"),
    ({"text_index": np.zeros(39, dtype=int)}, r"text_index needs one text number in \[0, 40\) per row of X \(40\)"),
    ({"text_index": np.full(40, 40)}, "text_index needs one text number"),
])
def test_fit_probe_refuses_bad_settings(xy, kw, match):
    with pytest.raises(MechtoxError, match=match):
        mt.fit_probe(*xy, HOOK, **kw)


def test_fit_probe_takes_labels_as_floats_or_bools(xy):
    """The checks accept what is valid: 0./1. floats and booleans give the probe of the int labels."""
    X, y = xy
    ref = mt.fit_probe(X, y, HOOK)
    for labels in (y.astype(float), y.astype(bool), y.tolist()):
        assert torch.equal(mt.fit_probe(X, labels, HOOK).vector, ref.vector)


@pytest.mark.parametrize("texts, labels, match", [
    (["a", "b"], [1], "2 texts but 1 labels"),
    (["a", "b"], [1, float("nan")], "row 1 has nan"),
    (["a", "b"], [0, 0.7], "row 1 has 0.7"),
    (["a", "b"], ["toxic", 0], "labels must be numbers 0 or 1"),
    ("ab", [0, 1], "needs a list of strings"),
    (["a", 3], [0, 1], "needs a list of strings"),
])
def test_labelled_texts_built_by_hand_are_checked(texts, labels, match):
    with pytest.raises(MechtoxError, match=match):
        LabelledTexts(texts, labels, "by hand")


def test_labelled_texts_store_int_labels():
    data = LabelledTexts(["a", "b", "c"], [1.0, 0.0, True], "by hand")
    assert data.labels.dtype == np.int64 and data.labels.tolist() == [1, 0, 1]
    assert data.subset([2, 1]).labels.tolist() == [1, 0]


def test_tokenize_one_string_is_one_text_and_nothing_is_an_error(tiny):
    one = mt.tokenize(tiny, "the cat sat")
    assert torch.equal(one.tokens, mt.tokenize(tiny, ["the cat sat"]).tokens)
    assert one.tokens.shape[0] == 1
    acts = mt.collect_activations(tiny, "the cat sat", [HOOK], progress=False)
    assert acts[HOOK].shape[0] == 1
    with pytest.raises(MechtoxError, match="no texts to tokenize"):
        mt.tokenize(tiny, [])
    with pytest.raises(MechtoxError, match="texts must be strings; got a int"):
        mt.tokenize(tiny, ["fine", 7])


def test_subset_takes_a_boolean_mask_and_refuses_positions_out_of_range():
    """`data.subset(data.labels == 1)` failed with a TypeError from a list index (and a mask of a
    prompt set was read as the positions 0 and 1); a position past the end was an IndexError."""
    data = LabelledTexts(["a", "b", "c", "d"], [1, 0, 1, 0], "by hand")
    toxic = data.subset(data.labels == 1)
    assert toxic.texts == ["a", "c"] and toxic.labels.tolist() == [1, 1]
    assert data.subset(range(1, 3)).texts == ["b", "c"] and data.subset([-1]).texts == ["d"]
    assert data.subset(torch.tensor([3, 0])).texts == ["d", "a"] and len(data.subset([])) == 0
    for bad, match in (([4], "position 4 is out of range for 4 items"), ([-5], "position -5 is out of range"),
                       ([0.5], "whole numbers or a boolean mask"), (np.array([True, False]), r"one entry per item \(4\)")):
        with pytest.raises(MechtoxError, match=match):
            data.subset(bad)
    prompts = mt.load_prompts("builtin:prompts", limit=5)
    mask = np.array([False, True, False, True, False])
    assert prompts.subset(mask).prompts == [prompts.prompts[1], prompts.prompts[3]]


def test_collect_activations_checks_token_ids_and_takes_one_hook_name(tiny):
    """Token ids outside the vocabulary (an IndexError deep in the embedding, or -1 read silently),
    fractional ids (cut to whole ones), None and mixed items are one-line errors; one hook name is
    one hook, not its characters; a 2-d tensor of ids is one sequence per row."""
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    acts = mt.collect_activations(tiny, ids, HOOK, progress=False)
    assert not acts[HOOK].requires_grad  # run without autograd, ready for numpy
    assert torch.equal(acts[HOOK], mt.collect_activations(tiny, ids.tolist(), [HOOK], progress=False)[HOOK])
    for data, match in (([[1, 2, 97]], "token id 97, outside the model's vocabulary \\(0-96\\)"),
                        ([[1, -1]], "token id -1"), ([[1.5, 2]], "item 0 is list '\\[1.5, 2\\]'"),
                        ([[1, 2], None], "item 1 is NoneType"), (["fine", None], "texts must be strings")):
        with pytest.raises(MechtoxError, match=match):
            mt.collect_activations(tiny, data, HOOK, progress=False)


def test_generate_checks_token_id_prompts(tiny):
    """Token-id prompts went unchecked: an id past the vocabulary was an IndexError inside the
    embedding, a negative one an OverflowError, None a TypeError."""
    from mechtox.generation import generate

    ids = generate(tiny, [[5, 6, 7]], 2, progress=False)
    assert ids.prompt_ids == [[5, 6, 7]] and len(ids.continuation_ids[0]) == 2
    for prompts, match in (([[1, 2, 500]], "token id 500, outside"), ([[1, -2]], "token id -2"),
                           ([None], "item 0 is NoneType")):
        with pytest.raises(MechtoxError, match=match):
            generate(tiny, prompts, 2, progress=False)


@pytest.mark.parametrize("direction, match", [
    (np.ones(64), "direction must be a tensor or a Direction"),    # an AttributeError ('norm')
    ([1.0] * 64, "direction must be a tensor or a Direction"),     # an AttributeError ('shape')
    (torch.zeros(64), "the direction is zero or not finite"),      # NaN in every table
    (torch.full((64,), float("nan")), "the direction is zero or not finite"),
])
def test_attribute_checks_its_direction(tiny, direction, match):
    from mechtox.attribution import attribute

    with pytest.raises(MechtoxError, match=match):
        attribute(tiny, tiny, direction, ["hello there"], max_new_tokens=2, progress=False)


def test_logit_lens_checks_the_vectors_width_and_takes_one_vector(tiny):
    v = tiny.W_U[:, 5].detach()
    assert mt.logit_lens(tiny, v, k=3) == mt.logit_lens(tiny, v[None], k=3)
    assert mt.logit_lens(tiny, v.tolist(), k=3) == mt.logit_lens(tiny, v[None], k=3)
    with pytest.raises(MechtoxError, match=r"d_model \(64\), not of shape \(2, 7\)"):
        mt.logit_lens(tiny, torch.randn(2, 7))


def test_decode_neurons_takes_a_ranking_or_pairs_and_checks_them(tiny):
    pairs = [(1, 3), (0, 7)]
    table = pd.DataFrame(pairs, columns=["layer", "neuron"])
    ref = mt.decode_neurons(tiny, table, k=3)
    assert mt.decode_neurons(tiny, pairs, k=3)["tokens"].tolist() == ref["tokens"].tolist()
    ranking = mt.rank_neurons(tiny, torch.randn(tiny.cfg.d_model))
    assert len(mt.decode_neurons(tiny, ranking, k=2)) == tiny.cfg.n_layers * tiny.cfg.d_mlp
    with pytest.raises(MechtoxError, match=r"neuron \(2, 0\) is outside the model \(2 layers of 128 neurons\)"):
        mt.decode_neurons(tiny, [(2, 0)])
    with pytest.raises(MechtoxError, match=r"neuron \(0, 128\) is outside"):
        mt.decode_neurons(tiny, [(0, 128)])
    with pytest.raises(MechtoxError, match="no layer or neuron column"):
        mt.decode_neurons(tiny, pd.DataFrame({"a": [1]}))
    with pytest.raises(MechtoxError, match=r"or \(layer, neuron\) pairs"):
        mt.decode_neurons(tiny, [1, 2])


def _forward(model, iv):
    from mechtox.interventions import applied

    with applied(model, iv):
        return model(mt.tokenize(model, ["the cat sat"]).tokens)


def test_interventions_name_what_does_not_fit_the_model(tiny):
    from mechtox import interventions as iv

    hook = "blocks.0.hook_resid_post"
    d = tiny.cfg.d_model
    with pytest.raises(MechtoxError, match="the model has no hook blocks.5.hook_resid_post"):
        _forward(tiny, iv.steer(torch.randn(d), 1.0, "blocks.5.hook_resid_post"))
    with pytest.raises(MechtoxError, match="the model has no hook blocks.5.mlp.hook_post"):
        _forward(tiny, iv.ablate([(5, 0)]))
    with pytest.raises(MechtoxError, match=f"a direction of size 7 cannot be added at {hook}, whose activations have size {d}"):
        _forward(tiny, iv.steer(torch.randn(7), 1.0, hook))
    d_mlp = tiny.cfg.d_mlp
    with pytest.raises(MechtoxError, match=f"neuron {d_mlp} does not exist at blocks.0.mlp.hook_post, which has {d_mlp}"):
        _forward(tiny, iv.ablate([(0, d_mlp)]))
    with pytest.raises(MechtoxError, match=f"neuron {d_mlp + 3} does not exist at blocks.1.mlp.W_out"):
        _forward(tiny, iv.ablate([(1, d_mlp + 3)], mode="value"))
    with pytest.raises(MechtoxError, match="neuron -1 does not exist at blocks.0.mlp.W_in"):
        _forward(tiny, iv.scale_keys([(0, -1)], 2.0))
    with pytest.raises(MechtoxError, match="the model has no parameter blocks.4.mlp.W_in"):
        _forward(tiny, iv.scale_keys([(4, 0)], 2.0))
    W_in = tiny.blocks[0].mlp.W_in.detach().clone()
    with pytest.raises(MechtoxError):  # a failed edit leaves the weights as they were
        _forward(tiny, iv.combined("both", iv.scale_keys([(0, 1)], 3.0), iv.scale_keys([(0, d_mlp)], 2.0)))
    assert torch.equal(tiny.blocks[0].mlp.W_in, W_in)
    ok = _forward(tiny, iv.ablate([(0, d_mlp - 1)]))  # the last neuron is in range
    assert torch.isfinite(ok).all()


@pytest.mark.parametrize("make, match", [
    (lambda iv, d: iv.steer(torch.randn(d), float("nan"), HOOK), "alpha must be a finite number, not nan"),
    (lambda iv, d: iv.subtract(torch.randn(d), float("inf"), HOOK), "alpha must be a finite number"),
    (lambda iv, d: iv.scale_keys([(0, 1)], float("nan")), "the key scale factor must be a finite number"),
    (lambda iv, d: iv.steer(torch.zeros(d), 1.0, HOOK), "one finite, non-zero vector"),
    (lambda iv, d: iv.steer(torch.full((d,), float("nan")), 1.0, HOOK), "one finite, non-zero vector"),
    (lambda iv, d: iv.steer(torch.randn(2, d), 1.0, HOOK), r"one finite, non-zero vector \(got shape \(2, 64\)\)"),
])
def test_intervention_settings_are_checked_when_made(tiny, make, match):
    from mechtox import interventions as iv

    with pytest.raises(MechtoxError, match=match):
        make(iv, tiny.cfg.d_model)


def test_one_prompt_string_is_one_prompt(tiny):
    from mechtox.generation import generate

    one = generate(tiny, "the cat", max_new_tokens=2, progress=False)
    assert len(one.continuations) == 1
    assert one.continuations == generate(tiny, ["the cat"], max_new_tokens=2, progress=False).continuations
    probe = mt.fit_probe(np.random.default_rng(0).normal(size=(40, tiny.cfg.d_model)), np.array([0, 1] * 20), HOOK)
    scorer = mt.ProbeScorer(tiny, probe)
    assert scorer("the cat").shape == (1,)
    assert np.allclose(scorer("the cat"), scorer(["the cat"]))


@pytest.mark.parametrize("cols, match", [
    ((["a", "b"], ["c"], ["d", "e"]), "got 2 prompt, 1 chosen, 2 rejected"),
    (("ab", ["c", "d"], ["d", "e"]), "needs prompt as a list of strings"),
    ((["a"], [None], ["d"]), "needs chosen as a list of strings"),
])
def test_preference_pairs_built_by_hand_are_checked(cols, match):
    from mechtox.data import PreferencePairs

    with pytest.raises(MechtoxError, match=match):
        PreferencePairs(*cols, "by hand")


@pytest.mark.parametrize("kw, match", [
    ({"beta": -1.0}, "beta .the DPO temperature. must be a positive number"),
    ({"beta": float("nan")}, "beta"),
    ({"checkpoint_every": 0}, "checkpoint_every must be at least 1"),
    ({"max_prompt_tokens": 0}, "max_prompt_tokens must be at least 1"),
    ({"warmup_steps": -1}, "warmup_steps must be at least 0"),
    ({"clip": float("inf")}, "clip must be a finite number >= 0"),
    ({"weight_decay": -0.1}, "weight_decay must be a finite number >= 0"),
    ({"val_fraction": 1.0}, r"val_fraction must be in \[0, 1\)"),
    ({"dtype": "float16"}, "TrainConfig.dtype must be one of 'float32', 'bfloat16', not 'float16'"),
    ({"lr": "1e-5"}, "TrainConfig.lr must be a number, not '1e-5'"),  # was a TypeError from a comparison
    ({"max_steps": 2.5}, "TrainConfig.max_steps must be a whole number, not 2.5"),
    ({"compile": "no"}, "TrainConfig.compile must be True or False, not 'no'"),
    # NaN or inf passed the comparisons: NaN LoRA scaling, an infinite SAP perturbation
    ({"lora_alpha": float("nan")}, "lora_alpha a finite number > 0"),
    ({"lora_alpha": float("inf")}, "lora_alpha a finite number > 0"),
    ({"sap_rho": float("inf")}, "sap_rho and sap_eps must be finite numbers >= 0"),
    ({"sap_temperature": float("inf")}, "sap_temperature a finite number > 0"),
])
def test_train_config_refuses_settings_that_would_fail_mid_run(kw, match):
    from mechtox.training import TrainConfig

    with pytest.raises(MechtoxError, match=match):
        TrainConfig(**kw)


def _pairs(n=6):
    from mechtox.data import PreferencePairs

    return PreferencePairs(["the cat"] * n, [" sat on the mat"] * n, [" is a bad word"] * n, "by hand")


def test_train_takes_pairs_for_dpo_and_says_what_else_to_pass(tiny, tmp_path):
    from mechtox.training import DPOObjective, TrainConfig, train

    cfg = TrainConfig(lr=1e-3, batch_size=2, max_steps=2, warmup_steps=0, eval_every=0, checkpoint_every=2, backend="hooked")
    ref = mt.tiny_model()
    ref.load_state_dict(tiny.state_dict())
    before = tiny.blocks[0].mlp.W_out.detach().clone()
    train(tiny, _pairs(), cfg, tmp_path / "a", progress=False)
    train(ref, DPOObjective(ref, _pairs(), cfg), cfg, tmp_path / "b", progress=False)
    assert not torch.equal(tiny.blocks[0].mlp.W_out, before)  # it trained, and as the explicit objective does
    for (name, p), q in zip(tiny.named_parameters(), ref.parameters(), strict=True):
        assert torch.equal(p, q), name
    with pytest.raises(MechtoxError, match="train needs an objective .* or PreferencePairs, not a str"):
        train(tiny, "pairs", cfg, tmp_path / "c", progress=False)
    with pytest.raises(MechtoxError, match="PreferencePairs train the dpo objective; for 'sft-probe' pass make_objective"):
        train(tiny, _pairs(), TrainConfig(objective="sft-probe"), tmp_path / "d", progress=False)
    with pytest.raises(MechtoxError, match="need at least 2 training examples"):
        train(tiny, _pairs(1), cfg, tmp_path / "e", progress=False)
    (tmp_path / "file").write_text("mine")
    with pytest.raises(MechtoxError, match="is a file; train writes a folder there"):
        train(tiny, _pairs(), cfg, tmp_path / "file", progress=False)
    assert (tmp_path / "file").read_text() == "mine"


def test_train_split_given_by_hand(tiny, tmp_path):
    from mechtox.training import TrainConfig, _split

    cfg = TrainConfig()
    assert _split(6, cfg, None, [4, 5]) == ([0, 1, 2, 3], [4, 5])
    assert _split(6, cfg, [0, 2], None) == ([0, 2], [1, 3, 4, 5])
    assert _split(6, cfg, [0, 1], [5]) == ([0, 1], [5])
    for tr, va, match in (([0, 9], None, r"example numbers in \[0, 6\)"), (None, [-1], "example numbers"),
                          ([0, 1], [1], "share no example"), ([], [1], "non-empty")):
        with pytest.raises(MechtoxError, match=match):
            _split(6, cfg, tr, va)


def test_save_checkpoint_replaces_a_checkpoint_but_not_other_files(tiny, tmp_path):
    path = tmp_path / "ckpt"
    mt.save_checkpoint(tiny, path)
    mt.save_checkpoint(tiny, path)  # an earlier checkpoint is replaced
    assert mt.load_checkpoint(path, device="cpu").cfg.d_model == tiny.cfg.d_model
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "data.csv").write_text("a,b")
    for p in (tmp_path / "notes.txt", tmp_path / "folder"):
        with pytest.raises(MechtoxError, match="exists and is not a mechtox checkpoint; refusing to replace it"):
            mt.save_checkpoint(tiny, p)
    assert (tmp_path / "notes.txt").read_text() == "mine" and (tmp_path / "folder" / "data.csv").exists()
    (tmp_path / "empty").mkdir()
    mt.save_checkpoint(tiny, tmp_path / "empty")  # an empty folder is fine


def test_export_of_a_model_without_architecture_says_why(tiny, tmp_path):
    with pytest.raises(MechtoxError, match="has no original architecture .*tiny_model"):
        mt.export_hf(tiny, tmp_path / "hf")


def test_scorers_take_one_string_as_one_text():
    from mechtox.scorers import get_scorer

    sc = get_scorer("profanity")
    one = sc("you are a stupid idiot")
    assert one.shape == (1,) and one[0] == pytest.approx(sc(["you are a stupid idiot"])[0]) and one[0] > 0.5


def test_evaluation_functions_check_their_arguments(tiny):
    from mechtox.evaluate import evaluate, f1, perplexity, toxicity
    from mechtox.interventions import NOOP

    by_name = toxicity(tiny, ["the cat"], "profanity", max_new_tokens=2, progress=False)
    assert by_name.scorer == "profanity-check"
    with pytest.raises(MechtoxError, match="scorer must map texts to scores"):
        toxicity(tiny, ["the cat"], 3, max_new_tokens=2, progress=False)
    with pytest.raises(MechtoxError, match="perplexity reads one text"):
        perplexity(tiny, ["the cat sat on the mat"] * 3, progress=False)
    with pytest.raises(MechtoxError, match="window >= 2"):
        perplexity(tiny, "the cat sat on the mat " * 20, window=0, progress=False)
    with pytest.raises(MechtoxError, match="got 2 prompts and 1 golds"):
        f1(tiny, ["a b", "c d"], ["e"], max_new_tokens=2, progress=False)
    assert f1(tiny, "the cat", "sat", max_new_tokens=2, progress=False) == f1(
        tiny, ["the cat"], ["sat"], max_new_tokens=2, progress=False)
    with pytest.raises(MechtoxError, match="at least one intervention"):
        evaluate(tiny, [], ["the cat"], "profanity", progress=False)
    table, _ = evaluate(tiny, NOOP, ["the cat"], "profanity", config=_small_eval(), progress=False)
    assert table["intervention"].tolist() == ["none"]


def _small_eval():
    from mechtox.evaluate import EvalConfig

    return EvalConfig(max_new_tokens=2, ppl_tokens=0)


def test_probe_save_and_export_replace_their_own_output_only(tiny, tmp_path):
    probe = mt.fit_probe(np.random.default_rng(0).normal(size=(40, tiny.cfg.d_model)), np.array([0, 1] * 20), HOOK)
    probe.save(tmp_path / "p")
    probe.save(tmp_path / "p")  # an earlier probe is replaced
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(MechtoxError, match="is not a saved direction or probe; refusing to replace it"):
        probe.save(tmp_path / "notes.txt")
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "p"]  # nothing left aside


def test_a_folder_written_over_an_earlier_one_leaves_nothing_aside(tmp_path):
    from mechtox import _io

    for text in ("one", "two"):
        _io.write_with(tmp_path / "out", lambda tmp, text=text: (tmp.mkdir(), (tmp / "f").write_text(text)))
    assert (tmp_path / "out" / "f").read_text() == "two"
    (tmp_path / "was-a-file").write_text("x")
    _io.write_with(tmp_path / "was-a-file", lambda tmp: tmp.mkdir())
    assert (tmp_path / "was-a-file").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "was-a-file"]  # no .NAME.old.PID left


def test_export_hf_refuses_a_non_empty_folder_unless_forced(tiny_llama, tmp_path):
    model = tiny_llama
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "keep.txt").write_text("mine")
    with pytest.raises(MechtoxError, match="exists and is not empty; pass force=True"):
        mt.export_hf(model, tmp_path / "hf")
    assert (tmp_path / "hf" / "keep.txt").exists()
    mt.export_hf(model, tmp_path / "hf", force=True)
    assert (tmp_path / "hf" / "config.json").is_file() and not (tmp_path / "hf" / "keep.txt").exists()


def test_set_base_refuses_a_model_that_is_not_there(tmp_path):
    ws = mt.Workspace(tmp_path)
    with pytest.raises(MechtoxError, match="no model 'nosuch'"):
        ws.set_base("nosuch")
    assert ws.base_spec != "nosuch" and not (tmp_path / "workspace.json").exists()


@pytest.mark.parametrize("labels, kw, match", [
    ([0] * 3 + [1] * 1, {}, r"4 texts \(3 non-toxic, 1 toxic\) cannot be split into 3 \+ 1"),
    ([0, 1] * 3, {"test_size": 1}, r"cannot be split into 5 \+ 1 with both labels on each side"),
    ([0, 1] * 3, {"test_size": 4, "train_size": 1}, r"cannot be split into 1 \+ 4"),
    ([0] * 8, {}, r"a probe needs both classes: the 8 texts are all non-toxic \(0\)"),
])
def test_a_split_too_small_for_both_labels_says_so(labels, kw, match):
    from mechtox.probe import split_indices

    with pytest.raises(MechtoxError, match=match):
        split_indices(np.array(labels), **kw)


def test_split_of_the_smallest_possible_sets_keeps_both_labels_on_each_side():
    from mechtox.probe import split_indices

    y = np.array([0, 1, 0, 1])
    tr, te = split_indices(y, test_size=2)
    assert sorted(y[tr]) == [0, 1] and sorted(y[te]) == [0, 1]


def test_probe_sweep_on_too_few_texts_fails_before_collecting_activations(tiny, monkeypatch):
    import mechtox.probe as P

    monkeypatch.setattr(P, "collect_activations", lambda *a, **k: pytest.fail("activations collected first"))
    data = LabelledTexts(["you idiot", "hello"], np.array([1, 0]), "two")
    with pytest.raises(MechtoxError, match=r"2 texts \(1 non-toxic, 1 toxic\) cannot be split"):
        mt.probe_sweep(tiny, data, progress=False)


def test_choosing_C_by_cross_validation_needs_two_texts_of_each_label():
    from mechtox.probe import choose_C

    X = np.random.default_rng(0).normal(size=(5, 4))
    with pytest.raises(MechtoxError, match="the rarer label has 1"):
        choose_C(X, np.array([0, 0, 0, 0, 1]))
    assert choose_C(X[:4], np.array([0, 1, 0, 1])) > 0  # two of each: 2-fold CV runs


@pytest.mark.parametrize("loader, kw", [
    ("load_prompts", {"limit": 0}), ("load_prompts", {"limit": -1}), ("load_labelled", {"limit": -2}),
    ("load_pairs", {"limit": 0}), ("load_text", {"limit_chars": 0}), ("load_prompts", {"limit": 2.5}),
])
def test_loaders_refuse_a_limit_that_is_not_a_count(loader, kw):
    """limit=0 meant 'all' in some loaders and 'none' in others; -1 silently dropped the last row."""
    with pytest.raises(MechtoxError, match=f"{next(iter(kw))} must be a whole number of at least 1"):
        getattr(mt if hasattr(mt, loader) else __import__("mechtox.data", fromlist=[loader]), loader)(**kw)


def test_generate_refuses_zero_prompt_tokens_or_batch(tiny):
    from mechtox.generation import generate

    for kw in ({"max_prompt_tokens": 0}, {"batch_size": 0}):
        with pytest.raises(MechtoxError, match="max_prompt_tokens and batch_size must be at least 1"):
            generate(tiny, ["a b c"], 3, progress=False, **kw)
    one = generate(tiny, [[5, 6, 7]], 2, max_prompt_tokens=1, progress=False)
    assert one.prompt_ids == [[7]]  # the last token kept ([-0:] would have kept all three)


def test_ranking_top_checks_k_and_the_column(tiny):
    r = mt.rank_neurons(tiny, torch.randn(tiny.cfg.d_model))
    assert len(r.top(0)) == 0 and len(r.top(5, by="dot")) == 5
    with pytest.raises(MechtoxError, match="k must be a whole number of at least 0, not -3"):
        r.top(-3)
    with pytest.raises(MechtoxError, match="cannot rank by 'cos'; use one of cosine, dot, norm"):
        r.top(5, by="cos")


def test_constants_from_another_model_are_refused(tiny):
    """Mean ablation and head patching take constants [n_layers, d_mlp] / [n_layers, n_heads, d_head]:
    another model's (a different width) were indexed silently, or failed inside torch."""
    from mechtox.interventions import ablate, applied, set_heads

    toks = mt.tokenize(tiny, ["a b"]).tokens
    wide = torch.zeros(tiny.cfg.n_layers, tiny.cfg.d_mlp * 2)
    with pytest.raises(MechtoxError, match=f"the means are for layers of {2 * tiny.cfg.d_mlp} neurons"):
        with applied(tiny, ablate([(0, 1)], "mean", wide)):
            tiny(toks)
    with pytest.raises(MechtoxError, match=r"a neuron of layer 0 has no mean in means of shape \(2, 3\)"):
        ablate([(0, 5)], "mean", torch.zeros(2, 3))
    with pytest.raises(MechtoxError, match=r"mean ablation needs means \[n_layers, d_mlp\], not of shape \(3,\)"):
        ablate([(0, 1)], "mean", torch.zeros(3))
    heads = pd.DataFrame({"layer": [0], "head": [1]})
    with pytest.raises(MechtoxError, match=f"the head values are for {tiny.cfg.n_heads} heads of size {tiny.cfg.d_head + 1}"):
        with applied(tiny, set_heads(heads, torch.zeros(tiny.cfg.n_layers, tiny.cfg.n_heads, tiny.cfg.d_head + 1))):
            tiny(toks)
    with pytest.raises(MechtoxError, match="set_heads needs values"):
        set_heads(heads, torch.zeros(2, 4))
    ok = torch.zeros(tiny.cfg.n_layers, tiny.cfg.d_mlp)
    with applied(tiny, ablate([(0, 1)], "mean", ok)):
        assert torch.isfinite(tiny(toks)).all()


@pytest.mark.parametrize("labels, n", [([0, 0, 0, 1, 1], 4), ([0, 1] * 3, 5), ([0, 0, 0, 1], 3), ([0, 1] * 50, 99),
                                       ([0] * 9 + [1], 2)])
def test_stratified_subset_of_any_size_keeps_each_labels_share(labels, n):
    """It used scikit-learn's split alone, which also needs both labels among the rows left out:
    5 texts cut to 4 failed with an error about a '4 + 1' split the user never asked for."""
    from mechtox.probe import stratified_subset

    data = LabelledTexts([f"t{i}" for i in range(len(labels))], np.array(labels), "s")
    sub = stratified_subset(data, n, seed=3)
    assert len(sub) == n and len(set(sub.texts)) == n and set(sub.texts) <= set(data.texts)
    share = np.mean(labels) * n
    assert abs(int(np.sum(sub.labels)) - share) <= 1
    assert stratified_subset(data, n, seed=3).texts == sub.texts  # seeded


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_model_with_broken_weights_is_refused_when_loaded(tiny, tmp_path, bad, capsys):
    """A checkpoint holding NaN (a diverged run saved by hand) loaded silently: `eval` and `attribute`
    failed only at their perplexity step ("perplexity is not finite (NaN logits?)"), after the
    generation and attribution work, and the Python API never said."""
    from mechtox.cli import main
    from mechtox.models import check_finite, save_checkpoint

    with torch.no_grad():
        tiny.blocks[1].mlp.W_in[2, 3] = bad
    save_checkpoint(tiny, tmp_path / "broken")
    with pytest.raises(MechtoxError, match=r"broken: blocks\.1\.mlp\.W_in holds 1 NaN or infinite value"):
        mt.load_model(str(tmp_path / "broken"))
    assert main(["eval", "-w", str(tmp_path / "ws"), "--model", str(tmp_path / "broken"), "--limit", "2"]) == 2
    assert "blocks.1.mlp.W_in holds 1 NaN or infinite" in capsys.readouterr().err
    with torch.no_grad():
        tiny.blocks[1].mlp.W_in.fill_(1e36)  # finite, though their float32 sum is not
    assert check_finite(tiny, "huge") is tiny


@pytest.mark.parametrize("kw, match", [
    ({"batch_size": 0}, "EvalConfig.batch_size must be at least 1, not 0"),  # failed only when generating
    ({"ppl_window": 0}, "EvalConfig.ppl_window must be at least 1"),
    ({"ppl_tokens": -5}, r"EvalConfig.ppl_tokens must be at least 0 \(0: skip\), not -5"),
    ({"max_new_tokens": "20"}, "EvalConfig.max_new_tokens must be a whole number, not '20'"),
])
def test_eval_config_checks_its_settings_when_made(kw, match):
    from mechtox.evaluate import EvalConfig

    with pytest.raises(MechtoxError, match=match):
        EvalConfig(**kw)
    assert EvalConfig(ppl_tokens=0, f1_prompts=0).ppl_tokens == 0
