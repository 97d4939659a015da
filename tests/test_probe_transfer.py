"""A saved probe scored on other labelled data: bootstrap intervals, calibration, the command."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from mechtox.cli import main
from mechtox.probe import bootstrap_metrics, reliability_table


def test_bootstrap_interval_of_an_uninformative_score_matches_the_null_variance():
    """AUROC of a random score on 1,000 + 1,000 texts: 0.5, and the interval's width is what the
    Mann-Whitney variance under the null gives, 2 x 1.96 x sqrt((n1 + n0 + 1) / (12 n1 n0)) = 0.051."""
    rng = np.random.default_rng(1)
    y = np.r_[np.ones(1000), np.zeros(1000)]
    t = bootstrap_metrics(y, rng.random(2000), n_boot=400, seed=0).set_index("metric")
    width = t.loc["auroc", "ci_high"] - t.loc["auroc", "ci_low"]
    assert abs(t.loc["auroc", "value"] - 0.5) < 0.04 and 0.040 < width < 0.062
    assert t.loc["auroc", "ci_low"] < 0.5 < t.loc["auroc", "ci_high"]
    assert (t["ci_low"] <= t["value"]).all() and (t["value"] <= t["ci_high"]).all()


def test_bootstrap_values_by_hand():
    y = np.array([1, 1, 0, 0, 1, 0])
    p = np.array([0.9, 0.4, 0.2, 0.6, 0.8, 0.1])
    t = bootstrap_metrics(y, p, n_boot=50).set_index("metric")["value"]
    assert t["accuracy"] == pytest.approx(4 / 6)           # wrong: 0.4 (toxic) and 0.6 (not)
    assert t["f1"] == pytest.approx(2 / 3)                 # precision 2/3, recall 2/3
    assert t["auroc"] == pytest.approx(8 / 9)              # 8 of the 9 toxic/non-toxic pairs ordered right
    with pytest.raises(Exception, match="both labels"):
        bootstrap_metrics(np.ones(4), np.ones(4))


@pytest.mark.parametrize(("n", "toxic"), [(7, 0.3), (6, 0.7), (300, 0.3)])
def test_bootstrap_intervals_equal_one_sklearn_call_per_resample(n, toxic):
    """The block-vectorised resampling against sklearn's accuracy, F1 and AUROC called on each
    resample in turn (the same seeded resamples; ties in the scores, resamples of one label, of
    either label, and F1's zero division among them at n = 6 and 7)."""
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    rng = np.random.default_rng(n)
    y = (rng.random(n) < toxic).astype(int)
    y[:2] = [0, 1]
    p = np.round(rng.random(n) * 0.6 + 0.3 * y, 1)  # ties
    t = bootstrap_metrics(y, p, n_boot=300, seed=5).set_index("metric")
    idx = np.random.default_rng(5).integers(0, n, size=(300, n))
    keep = [i for i in idx if len(set(y[i].tolist())) > 1]
    if n < 300:  # resamples of one label occur: of the majority label
        assert (1 if toxic > 0.5 else 0,) in {tuple(set(y[i].tolist())) for i in idx if len(set(y[i].tolist())) == 1}
    for name, fn in (("accuracy", lambda a, b: accuracy_score(a, b > 0.5)),
                     ("f1", lambda a, b: f1_score(a, b > 0.5, zero_division=0.0)), ("auroc", roc_auc_score)):
        ref = np.percentile([fn(y[i], p[i]) for i in keep], [2.5, 97.5])
        assert [t.loc[name, "ci_low"], t.loc[name, "ci_high"]] == pytest.approx(ref.tolist(), abs=1e-12), name


def test_reliability_table_by_hand():
    y = np.array([1, 0, 1, 1, 0, 1])
    p = np.array([0.05, 0.15, 0.55, 0.95, 0.99, 1.0])  # 1.0 belongs to the last bin
    t = reliability_table(y, p, bins=2)
    assert t["n"].tolist() == [2, 4]
    assert t["mean_predicted"].tolist() == pytest.approx([0.1, (0.55 + 0.95 + 0.99 + 1.0) / 4])
    assert t["fraction_toxic"].tolist() == pytest.approx([0.5, 3 / 4])


def test_probe_eval_command_on_tiny(tmp_path, capsys):
    ws = ["-w", str(tmp_path / "ws"), "-q", "--model", "tiny"]
    assert main(["probe", *ws, "--data", "builtin:toxicity", "--n-train", "120", "--n-test", "60",
                 "--layers", "last"]) == 0
    capsys.readouterr()
    assert main(["probe", *ws, "--eval", "probe", "--data", "builtin:toxicity", "--limit", "100"]) == 0
    out = capsys.readouterr().out
    assert "probe-eval-probe-toxicity" in out
    run = tmp_path / "ws" / "runs" / "probe-eval-probe-toxicity"
    meta = json.loads((run / "probe-eval.json").read_text())
    rows = {(r["scorer"], r["metric"]): r for r in meta["rows"]}
    assert meta["n_texts"] == 100 and set(rows) == {("probe:probe", "accuracy"), ("probe:probe", "f1"),
                                                    ("probe:probe", "auroc"), ("profanity-check", "auroc")}
    assert all(0 <= r["ci_low"] <= r["value"] <= r["ci_high"] <= 1 for r in rows.values())
    assert (run / "reliability.html").is_file() and (run / "reliability.csv").is_file()
    assert main(["report", "-w", str(tmp_path / "ws")]) == 0
    assert "Probe transfer: probe" in (tmp_path / "ws" / "report.html").read_text()
    assert main(["probe", *ws, "--eval", "nope", "--data", "builtin:toxicity"]) == 2
    assert 0 < meta["n_seen_in_training"] < 100 and "among those the probe was fitted on" in meta["note"]
    assert "too narrow" not in meta["note"]  # 100 texts, half of them toxic


def test_probe_on_a_model_of_another_width_names_the_model_it_was_fitted_on(tmp_path, capsys, monkeypatch):
    """A probe read by a model of another width: the error said "fit it on this model" and nothing
    of the model it was fitted on. It names that model, with the --model to pass (the probe records
    it: a path made absolute, the base alias as what it pointed at)."""
    from mechtox import models as M

    monkeypatch.chdir(tmp_path)
    M.save_checkpoint(M.tiny_model(), tmp_path / "small")
    M.save_checkpoint(M.tiny_model(d_model=32, d_head=8, n_heads=4), tmp_path / "narrow")
    ws = ["-w", str(tmp_path / "ws"), "-q"]
    assert main(["probe", *ws, "--model", "./small", "--data", "builtin:toxicity", "--n-train", "60", "--n-test",
                 "20", "--layers", "last"]) == 0
    capsys.readouterr()
    assert main(["probe", *ws, "--model", "./narrow", "--eval", "probe", "--data", "builtin:toxicity"]) == 2
    err = capsys.readouterr().err
    assert (f"direction 'probe' was fitted on 'tiny' (--model {tmp_path / 'small'}), d_model 64; model 'tiny' has "
            "d_model 32: pass the model it was fitted on") in err and err.count("\n") == 1
    assert main(["models", *ws, "--set-base", "./small"]) == 0
    assert main(["probe", *ws, "--data", "builtin:toxicity", "--n-train", "60", "--n-test", "20", "--layers", "last",
                 "--out", "p2"]) == 0
    saved = json.loads((tmp_path / "ws" / "directions" / "p2" / "direction.json").read_text())["provenance"]
    assert saved["model"] == str(tmp_path / "small")


def test_probe_eval_scores_on_the_model_the_probe_was_fitted_on_unless_told(tmp_path, capsys, monkeypatch):
    """`probe --model ./b --out p` then `probe --eval p` scored p on the workspace's base model, silently
    (the same width: nothing failed), and the run did not say which model read the texts. Without
    --model it is now the probe's own model; the run records the model either way."""
    from mechtox import models as M

    monkeypatch.chdir(tmp_path)
    M.save_checkpoint(M.tiny_model(seed=1), tmp_path / "a")
    M.save_checkpoint(M.tiny_model(seed=2), tmp_path / "b")
    ws = ["-w", str(tmp_path / "ws"), "-q"]
    assert main(["models", *ws, "--set-base", "./a"]) == 0
    assert main(["probe", *ws, "--model", "./b", "--data", "builtin:toxicity", "--n-train", "60", "--n-test", "20",
                 "--layers", "last"]) == 0
    def scored(*model):
        capsys.readouterr()
        assert main(["probe", *ws, *model, "--eval", "probe", "--data", "builtin:toxicity", "--limit", "60"]) == 0
        run = "probe-eval-probe-toxicity" + ("-on-base" if model == ("--model", "base") else "")
        m = json.loads((tmp_path / "ws" / "runs" / run / "probe-eval.json").read_text())
        return m["model"], m["probe_model"], [r["value"] for r in m["rows"]]

    own, on_b, on_a = scored(), scored("--model", "./b"), scored("--model", "base")
    assert own[:2] == (str(tmp_path / "b"), str(tmp_path / "b")) and on_a[:2] == ("base", str(tmp_path / "b"))
    assert own[2] == on_b[2] and own[2][:3] != on_a[2][:3]  # the probe's rows: b's activations, not a's
    assert main(["report", "-w", str(tmp_path / "ws"), "-q"]) == 0
    assert "read by base" in (tmp_path / "ws" / "report.html").read_text()
    shutil.rmtree(tmp_path / "b")
    capsys.readouterr()
    assert main(["probe", *ws, "--eval", "probe", "--data", "builtin:toxicity"]) == 2
    err = capsys.readouterr().err
    assert f"probe 'probe' was fitted on '{tmp_path / 'b'}', which cannot be loaded now" in err and "pass --model" in err
    assert err.count("\n") == 1


def test_a_probe_scored_on_a_second_data_set_keeps_the_first_run(tmp_path, capsys):
    """Every `probe --eval NAME` wrote runs/probe-eval-NAME: scoring a probe on a second data set
    replaced the first one's table, silently. Runs are now named after the data too (and after
    --model when it is not the probe's own model)."""
    from mechtox.jobs._base import data_label

    ws = ["-w", str(tmp_path / "ws"), "-q", "--model", "tiny"]
    assert main(["probe", *ws, "--data", "builtin:toxicity", "--n-train", "60", "--n-test", "20", "--layers", "last"]) == 0
    other = tmp_path / "tweets.csv.gz"
    import gzip

    other.write_bytes(gzip.compress(("text,label\n" + "".join(f"you stupid idiot {i},1\nthanks for the help {i},0\n"
                                                              for i in range(20))).encode()))
    assert main(["probe", *ws, "--eval", "probe", "--data", "builtin:toxicity", "--limit", "60"]) == 0
    assert main(["probe", *ws, "--eval", "probe", "--data", str(other)]) == 0
    runs = tmp_path / "ws" / "runs"
    first = json.loads((runs / "probe-eval-probe-toxicity" / "probe-eval.json").read_text())
    second = json.loads((runs / "probe-eval-probe-tweets" / "probe-eval.json").read_text())
    assert (first["n_texts"], second["n_texts"]) == (60, 40)
    assert sorted(p.name for p in runs.glob("probe-eval-*")) == ["probe-eval-probe-toxicity", "probe-eval-probe-tweets"]
    assert [data_label(s) for s in (None, "data:olid_train.csv", "../d/olid.csv.gz", "cardiffnlp/tweet_eval", "a b.jsonl")] \
        == ["jigsaw_balanced", "olid_train", "olid", "tweet_eval", "a-b"]


def test_probe_eval_counts_the_texts_the_probe_was_fitted_on(tmp_path, capsys):
    """Scored on the whole file it was fitted on (240 distinct texts, 120 in its training split),
    a probe has seen exactly 120 of them; on other texts, none (and no note)."""
    from mechtox.probe import Direction, Probe, seen_in_training, text_hashes

    ws = ["-w", str(tmp_path / "ws"), "-q", "--model", "tiny"]
    assert main(["probe", *ws, "--data", "builtin:toxicity", "--n-train", "120", "--n-test", "60",
                 "--layers", "last"]) == 0
    capsys.readouterr()
    assert main(["probe", *ws, "--eval", "probe", "--data", "builtin:toxicity"]) == 0
    assert "120 of these 240 texts are among those the probe was fitted on" in capsys.readouterr().out
    meta = json.loads((tmp_path / "ws" / "runs" / "probe-eval-probe-toxicity" / "probe-eval.json").read_text())
    assert meta["n_seen_in_training"] == 120
    other = tmp_path / "other.csv"
    other.write_text("text,label\n" + "".join(f"you stupid idiot number {i},1\nthanks for the help {i},0\n"
                                              for i in range(30)))
    assert main(["probe", *ws, "--eval", "probe", "--data", str(other)]) == 0
    meta = json.loads((tmp_path / "ws" / "runs" / "probe-eval-probe-other" / "probe-eval.json").read_text())
    assert meta["n_seen_in_training"] == 0 and "note" not in meta
    probe = Direction.load(tmp_path / "ws" / "directions" / "probe")
    assert len(probe.provenance["fitted_text_hashes"]) == 120 * len(text_hashes(["x"])[0])
    from mechtox.data import load_labelled

    padded = [f"  {x}\n" for x in load_labelled("builtin:toxicity").texts]  # white space around a text is ignored
    assert seen_in_training(probe, padded) == 120
    old = Probe(probe.vector, probe.hook_name, "logreg", weight=probe.weight)  # saved before the record
    assert seen_in_training(old, ["a"]) is None
    # --unseen: the 120 training texts left out, the 120 others scored
    assert main(["probe", *ws, "--eval", "probe", "--data", "builtin:toxicity", "--unseen"]) == 0
    out = capsys.readouterr().out
    meta = json.loads((tmp_path / "ws" / "runs" / "probe-eval-probe-toxicity" / "probe-eval.json").read_text())
    assert meta["n_texts"] == 120 and meta["n_seen_in_training"] == 0 and meta["n_left_out_as_fitted"] == 120
    assert "120 texts the probe was fitted on left out (--unseen)" in out
    old.save(tmp_path / "ws" / "directions" / "old")
    for argv, match in ((["--eval", "old", "--unseen"], "probe 'old' keeps no record of the texts it was fitted on"),
                        (["--unseen"], "--unseen leaves a saved probe's training texts out")):
        assert main(["probe", *ws, "--data", "builtin:toxicity", *argv]) == 2
        assert match in capsys.readouterr().err


def test_probe_eval_on_few_texts_says_its_intervals_are_rough(tmp_path, capsys):
    """With 6 texts of a label a percentile bootstrap interval undercovers; the table, its JSON and
    the report say so (before, a 12-text evaluation looked as sure as a 1,000-text one)."""
    ws = ["-w", str(tmp_path / "ws"), "-q", "--model", "tiny"]
    assert main(["probe", *ws, "--data", "builtin:toxicity", "--n-train", "60", "--n-test", "30", "--layers", "last"]) == 0
    few = tmp_path / "few.csv"
    few.write_text("text,label\n" + "".join(f"you stupid idiot number {i},1\nthanks for the help {i},0\n"
                                            for i in range(6)))
    capsys.readouterr()
    assert main(["probe", *ws, "--eval", "probe", "--data", str(few)]) == 0
    out = capsys.readouterr().out
    assert "only 6 toxic and 6 non-toxic texts" in out and "too narrow to trust" in out
    meta = json.loads((tmp_path / "ws" / "runs" / "probe-eval-probe-few" / "probe-eval.json").read_text())
    assert "only 6 toxic" in meta["note"]
    assert main(["report", "-w", str(tmp_path / "ws"), "-q"]) == 0
    assert "only 6 toxic and 6 non-toxic texts" in (tmp_path / "ws" / "report.html").read_text()


@pytest.mark.parametrize("n_informative", [2, 40])
# scores_ is read in its legacy per-class form; sklearn (1.9 here) warns that 1.10 will simplify it
@pytest.mark.filterwarnings("ignore:The fitted attributes of LogisticRegressionCV:FutureWarning")
def test_cv_scores_agree_with_sklearn_cross_validation(n_informative):
    """Our fold AUROCs per C (each fold standardised on its own training part) against sklearn's
    LogisticRegressionCV on the same folds (which standardises nothing: the features here are
    already standard normal), for a sparse and a dense signal; choose_C takes the best of ours; the
    token probe's cross-validation gives the same scores when every text is one token."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

    from mechtox.probe import CV_CS, choose_C, cv_scores

    rng = np.random.default_rng(n_informative)
    X = rng.standard_normal((300, 60))
    y = (X[:, :n_informative].sum(1) + rng.standard_normal(300) * 2 > 0).astype(int)
    ref = LogisticRegressionCV(Cs=list(CV_CS), cv=StratifiedKFold(5, shuffle=True, random_state=0),
                               scoring="roc_auc", max_iter=2000, l1_ratios=(0.0,)).fit(X, y)
    theirs = ref.scores_[1].mean(0).ravel()
    ours = cv_scores(X, y, seed=0)
    assert [ours[c] for c in CV_CS] == pytest.approx(theirs.tolist(), abs=0.01)
    assert choose_C(X, y, seed=0) == max(CV_CS, key=lambda c: (ours[c], -c))
    if n_informative == 2:  # the token probe's CV (folds over texts, warm starts), one token per text
        tokens = cv_scores(X, y, seed=0, text_index=np.arange(300))
        assert [tokens[c] for c in CV_CS] == pytest.approx([ours[c] for c in CV_CS], abs=0.002)
    if n_informative == 40:  # a dense signal: weak regularization clearly wins for both
        assert choose_C(X, y, seed=0) == CV_CS[int(np.argmax(theirs))]


def test_sweep_with_cv_and_transfer_on_tiny(tmp_path, capsys):
    """(The transfer texts were once the training texts themselves: a transfer AUROC of training data.)"""
    import pandas as pd

    from .conftest import synthetic_labelled

    other = synthetic_labelled(120, seed=5)
    pd.DataFrame({"text": other.texts, "label": other.labels}).to_csv(tmp_path / "other.csv", index=False)
    ws = ["-w", str(tmp_path / "ws"), "-q", "--model", "tiny"]
    assert main(["probe", *ws, "--data", "builtin:toxicity", "--n-train", "all", "--n-test", "60", "--C", "cv",
                 "--eval-data", str(tmp_path / "other.csv"), "--limit", "80", "--select-on", "transfer_auroc"]) == 0
    out = capsys.readouterr().out
    assert "transfer_auroc" in out and "C_by_cv" in out and "180 train / 60 test" in out
    assert "transfer AUROC on 80 texts" in out and "left out" not in out
    assert main(["probe", *ws, "--data", "builtin:toxicity", "--n-train", "all", "--n-test", "60",
                 "--eval-data", "builtin:toxicity", "--limit", "80"]) == 2
    assert "all 80 texts of" in capsys.readouterr().err
    sweep = (tmp_path / "ws" / "directions" / "probe" / "sweep.csv").read_text().splitlines()
    assert "transfer_auroc" in sweep[0] and "C_by_cv" in sweep[0]
    for bad, match in ((["--C", "x"], "--C 'x'"), (["--select-on", "transfer_auroc"], "needs --eval-data")):
        assert main(["probe", *ws, "--data", "builtin:toxicity", *bad]) == 2
        assert match in capsys.readouterr().err


def test_probe_on_several_layers_together(tmp_path, capsys):
    """--together: one probe on the layers side by side; it scores texts like a probe whose
    activations are concatenated by hand (pooled, and per token with --aggregate), and the
    commands that need one layer refuse it."""
    import torch

    from mechtox.activations import collect_activations
    from mechtox.models import tiny_model
    from mechtox.probe import Direction, ProbeScorer

    ws = ["-w", str(tmp_path / "ws"), "-q", "--model", "tiny"]
    assert main(["probe", *ws, "--data", "builtin:toxicity", "--n-train", "120", "--n-test", "60", "--layers", "0,1",
                 "--together", "--save", "together", "--out", "both", "--eval-data", "builtin:toxicity",
                 "--limit", "60"]) == 0
    out = capsys.readouterr().out
    assert "blocks.0.hook_resid_post+blocks.1.hook_resid_post+ln_final.hook_normalized" in out
    sweep = (tmp_path / "ws" / "directions" / "both" / "sweep.csv").read_text()
    assert ",-1," in sweep
    model = tiny_model()
    probe = Direction.load(tmp_path / "ws" / "directions" / "both", model, several_layers_ok=True)
    assert probe.d_model == model.cfg.d_model and len(probe.hooks) == 3 and probe.weight.shape[0] == 3 * 64
    texts = ["you stupid idiot", "thanks for the help , friend"]
    acts = collect_activations(model, texts, list(probe.hooks), "mean", progress=False)
    by_hand = torch.sigmoid(torch.cat([acts[h] for h in probe.hooks], -1) @ probe.weight + probe.bias).numpy()
    assert np.allclose(ProbeScorer(model, probe)(texts), by_hand, atol=1e-6)
    _token_aggregates_equal_a_direct_computation(model, probe)
    assert main(["probe", *ws, "--eval", "both", "--data", "builtin:toxicity", "--limit", "60", "--aggregate", "max"]) == 0
    out = capsys.readouterr().out
    assert "probe:both:max" in out and "| auroc |" in out and "| accuracy |" not in out and "AUROC only" in out
    assert (tmp_path / "ws" / "runs" / "probe-eval-both-toxicity-max" / "probe-eval.json").is_file()  # beside the pooled run
    # without --model (scored on the model it records) and with --unseen: each read the probe in one piece
    no_model = ["probe", "-w", str(tmp_path / "ws"), "-q", "--eval", "both", "--data", "builtin:toxicity"]
    assert main([*no_model, "--limit", "60"]) == 0 and main([*no_model, "--unseen"]) == 0
    assert "probe-eval-both-toxicity" in capsys.readouterr().out
    assert main(["probe", *ws, "--data", "builtin:toxicity", "--aggregate", "max"]) == 2
    assert "--aggregate scores a saved probe: it needs --eval NAME" in capsys.readouterr().err
    assert main(["rank", *ws, "--probe", "both"]) == 2
    err = capsys.readouterr().err
    assert "reads 3 layers together" in err and err.count("\n") == 1
    assert main(["probe", *ws, "--data", "builtin:toxicity", "--save", "together"]) == 2
    assert "--save together needs --together" in capsys.readouterr().err



def _per_token_logits(model, probe, texts):
    """The probe's logit at every token of each text, read from one unpadded run_with_cache per text."""
    import torch

    from mechtox.data import encode

    out = []
    for ids in encode(model, texts, 64):
        _, cache = model.run_with_cache(torch.tensor([ids]))
        out.append(torch.cat([cache[h][0] for h in probe.hooks], -1).double() @ probe.weight.double() + probe.bias)
    return out


def _token_aggregates_equal_a_direct_computation(model, probe):
    """--aggregate max|logsumexp|logmeanexp: the probe applied to every token of each text, read here from
    one unpadded run_with_cache per text, and the logits reduced by hand."""
    import torch

    from mechtox.probe import ProbeScorer

    texts = ["you stupid idiot , you", "thanks", "a longer and kinder text about the weather today"]
    per_token = _per_token_logits(model, probe, texts)
    pooled = ProbeScorer(model, probe).logits(texts)
    for aggregate, reduce in (("max", lambda z: z.max()), ("logsumexp", lambda z: torch.logsumexp(z, 0)),
                              ("logmeanexp", lambda z: torch.logsumexp(z, 0) - np.log(len(z)))):
        got = ProbeScorer(model, probe, aggregate=aggregate).logits(texts)
        assert np.allclose(got, torch.stack([reduce(z) for z in per_token]).numpy(), atol=1e-5), aggregate
        assert not np.allclose(got, pooled, atol=1e-3)  # a different score than the pooled one


def _token_objective(X, text, y, C, w, b):
    """fit_token_weights' objective written out text by text (torch.logsumexp over each text's
    tokens minus the log of their count), in raw coordinates: the penalty is on the weight that
    standardised features would have, ``w * sigma``."""
    import torch

    X, w, b = torch.as_tensor(X), torch.as_tensor(w), torch.as_tensor(b)
    z = X @ w + b
    lme = torch.stack([torch.logsumexp(z[text == i], 0) - np.log((text == i).sum()) for i in range(len(y))])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(lme, torch.as_tensor(y, dtype=X.dtype))
    return bce + ((w * torch.as_tensor(X.numpy().std(0))) ** 2).sum() / (2 * C * len(y))


def test_token_probe_is_logistic_regression_with_one_token_per_text_and_optimal_with_many(monkeypatch):
    """fit_token_weights against two references: with one token per text it is sklearn's
    logistic regression (same C, same standardisation), and with 1-6 tokens per text its weights
    zero the gradient of the log-mean-exp objective written out by hand (a logsumexp, a mean or a
    max in the fit would leave it far from zero)."""
    import torch
    from sklearn.linear_model import LogisticRegression

    from mechtox.probe import fit_token_weights

    rng = np.random.default_rng(3)
    X = rng.standard_normal((240, 12)) * rng.uniform(0.5, 3, 12) + rng.standard_normal(12)
    y = (X[:, 0] - X[:, 1] + rng.standard_normal(240) > 0).astype(int)
    for C in (0.05, 1.0):
        w, b = fit_token_weights(X, np.arange(240), y, C)
        mu, sd = X.mean(0), X.std(0)
        clf = LogisticRegression(C=C, tol=1e-10, max_iter=10000).fit((X - mu) / sd, y)
        w_ref = clf.coef_[0] / sd
        assert np.allclose(w, w_ref, atol=2e-4) and abs(b - (clf.intercept_[0] - mu @ w_ref)) < 2e-4, C

    text = np.repeat(np.arange(240), rng.integers(1, 7, 240))
    Xt = X[text] + rng.standard_normal((len(text), 12))
    w, b = fit_token_weights(Xt, text, y, 0.1)
    wt = torch.tensor(w, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True)
    _token_objective(torch.as_tensor(Xt), text, y, 0.1, wt, bt).backward()
    assert max(wt.grad.abs().max(), bt.grad.abs()) < 1e-5
    from mechtox import probe as probe_module

    real = probe_module.aggregate_tokens
    for how in ("logsumexp", "mean"):  # the same check fails for a fit on another aggregate
        monkeypatch.setattr(probe_module, "aggregate_tokens", lambda z, t, n, _, how=how: real(z, t, n, how))
        w2, b2 = fit_token_weights(Xt, text, y, 0.1)
        wt = torch.tensor(w2, requires_grad=True)
        bt = torch.tensor(b2, requires_grad=True)
        _token_objective(torch.as_tensor(Xt), text, y, 0.1, wt, bt).backward()
        assert wt.grad.abs().max() > 1e-3, how


def test_token_probe_on_tiny(tmp_path, capsys):
    """--pooling tokens: the saved probe scores a text by the log-mean-exp of its token logits,
    read here from one unpadded run_with_cache per text; a padded training batch (ProbeModule)
    gives the same; its --eval is calibrated (accuracy and F1 reported); the guards."""
    import torch

    from mechtox.data import encode
    from mechtox.models import tiny_model
    from mechtox.probe import TOKEN_MEMORY_GIB, Direction, ProbeScorer, _check_token_memory

    ws = ["-w", str(tmp_path / "ws"), "-q", "--model", "tiny"]
    assert main(["probe", *ws, "--data", "builtin:toxicity", "--n-train", "120", "--n-test", "60", "--layers", "1",
                 "--pooling", "tokens", "--C", "0.1", "--eval-data", "builtin:toxicity", "--limit", "60"]) == 0
    assert "tokens pooling" in capsys.readouterr().out
    model = tiny_model()
    probe = Direction.load(tmp_path / "ws" / "directions" / "probe", model)
    assert probe.pooling == "tokens"
    texts = ["you stupid idiot , you", "thanks", "a longer and kinder text about the weather today"]
    by_hand = [float(torch.logsumexp(z, 0) - np.log(len(z))) for z in _per_token_logits(model, probe, texts)]
    got = ProbeScorer(model, probe).logits(texts)
    assert np.allclose(got, by_hand, atol=1e-5)
    assert not np.allclose(got, ProbeScorer(model, probe, aggregate="logsumexp").logits(texts), atol=1e-3)
    ids = encode(model, texts, 64)
    width = max(map(len, ids))
    tokens = torch.tensor([x + [0] * (width - len(x)) for x in ids])
    mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
    _, cache = model.run_with_cache(tokens, attention_mask=mask)
    p = probe.module().pooled(cache[probe.hook_name], mask).detach().double()
    assert np.allclose(p.numpy(), 1 / (1 + np.exp(-np.array(by_hand))), atol=1e-5)

    assert main(["probe", *ws, "--eval", "probe", "--data", "builtin:toxicity", "--limit", "60"]) == 0
    out = capsys.readouterr().out
    assert "| probe:probe | accuracy |" in out and "AUROC only" not in out
    assert main(["probe", *ws, "--data", "builtin:toxicity", "--pooling", "tokens", "--method", "svm"]) == 2
    assert "--pooling tokens fits a logistic probe" in capsys.readouterr().err
    _check_token_memory(2600, 64, 576, 4)  # 1.4 GiB: fine
    with pytest.raises(Exception, match=r"up to 17\.6 GiB for 32 hooks x 4000 texts x 64 tokens.*fewer --layers"):
        _check_token_memory(4000, 64, 576, 32)
    assert TOKEN_MEMORY_GIB < 18


def test_token_probe_sample_weight_is_duplication():
    """fit_token_weights(sample_weight=k) against the same texts written out k times (whole-number
    weights, a weight of 0 leaving the text out): one fit weights the cross-entropy and the
    standardising statistics, the other only sees more rows; the probes agree. Bad weights are a
    one-line error."""
    from mechtox.errors import MechtoxError
    from mechtox.probe import fit_token_weights

    rng = np.random.default_rng(5)
    n = 90
    y = rng.integers(0, 2, n)
    y[:2] = (0, 1)
    count = rng.integers(1, 5, n)
    text = np.repeat(np.arange(n), count)
    X = rng.standard_normal((len(text), 8)) * rng.uniform(0.5, 3, 8) + 0.8 * y[text][:, None] * (np.arange(8) < 3)
    k = rng.integers(0, 4, n)
    k[:2] = 1
    w, b = fit_token_weights(X, text, y, 0.1, sample_weight=k)
    copies = np.repeat(np.arange(n), k)  # text i written out k[i] times
    rows = np.concatenate([np.flatnonzero(text == i) for i in copies])
    new_text = np.repeat(np.arange(len(copies)), count[copies])
    w2, b2 = fit_token_weights(X[rows], new_text, y[copies], 0.1)
    assert np.allclose(w, w2, atol=1e-5) and abs(b - b2) < 1e-5
    w1, _ = fit_token_weights(X, text, y, 0.1)
    assert not np.allclose(w, w1, atol=1e-3)  # the weights changed the fit
    # as in sklearn, every weight doubled is every text twice: the penalty counts twice the texts (C doubled)
    assert np.allclose(fit_token_weights(X, text, y, 0.1, sample_weight=np.full(n, 2.0))[0],
                       fit_token_weights(X, text, y, 0.2)[0], atol=1e-5)
    for bad in (np.ones(n - 1), -np.ones(n), np.where(y == 1, 0.0, 1.0), np.full(n, np.nan)):
        with pytest.raises(MechtoxError, match="sample_weight"):
            fit_token_weights(X, text, y, 0.1, sample_weight=bad)


@pytest.mark.parametrize("method", ["logreg", "diffmean", "svm"])
def test_direction_sample_weight_is_duplication(method):
    """fit_direction_weights(sample_weight=k) against the rows written out k times (0: left out):
    weighted standardising statistics and loss (or class means) against plain ones on more rows."""
    from mechtox.probe import fit_direction_weights

    rng = np.random.default_rng(3)
    n = 120
    y = rng.integers(0, 2, n)
    y[:2] = (0, 1)
    X = rng.standard_normal((n, 6)) * rng.uniform(0.5, 3, 6) + 0.7 * y[:, None] * (np.arange(6) < 2) + 4.0
    k = rng.integers(0, 4, n)
    k[:2] = 1
    w, b = fit_direction_weights(X, y, method, 0.5, sample_weight=k)
    rows = np.repeat(np.arange(n), k)
    w2, b2 = fit_direction_weights(X[rows], y[rows], method, 0.5)
    tol = 2e-3 if method == "svm" else 1e-4  # liblinear's dual solver stops at its own tolerance
    assert np.allclose(w, w2, atol=tol, rtol=tol) and b == pytest.approx(b2, abs=tol, rel=tol)
    w1, _ = fit_direction_weights(X, y, method, 0.5)
    assert not np.allclose(w, w1, atol=1e-2)  # the weights changed the fit
    ones = fit_direction_weights(X, y, method, 0.5, sample_weight=np.ones(n))  # the weighted path, all ones
    assert np.allclose(ones[0], w1, atol=1e-6) and ones[1] == pytest.approx(fit_direction_weights(X, y, method, 0.5)[1])


def test_cue_weights_by_hand():
    """Shares of each combination of cues among the toxic texts over those among the non-toxic ones,
    by hand; a combination no toxic text has gets 0, the clip caps a weight, and texts left out
    (here the non-toxic ones about Wikipedia) get 0 and count in no share."""
    from mechtox.errors import MechtoxError
    from mechtox.probe import cue_weights, matching

    texts = ["you idiot", "you suck!", "shut up", "STUPID!", "thank you", "the article", "a source", "nice",
             "see the wiki page"]
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0])
    keep = ~(matching(texts, "wikipedia") & (y == 0))
    assert keep.tolist() == [True] * 5 + [False, False, True, False]
    # "you": 2 of the 4 toxic texts; 1 of the 2 kept non-toxic ones (of 5: 1) ...
    assert cue_weights(texts, y, ["you"], keep).tolist() == pytest.approx([1, 1, 1, 1, 1, 0, 0, 1, 0])
    assert cue_weights(texts, y, ["you"]).tolist() == pytest.approx([1] * 4 + [(2 / 4) / (1 / 5)] + [(2 / 4) / (4 / 5)] * 4)
    w = cue_weights(texts, y, ["you", "exclaim"])
    # ... with "!": toxic "you idiot" (you), "you suck!" (both), "shut up" (neither), "STUPID!" (!): a quarter each;
    # non-toxic: "thank you" (you) 1/5, the other four (neither) 4/5
    assert w.tolist() == pytest.approx([1, 1, 1, 1, 0.25 / 0.2, 0.25 / 0.8, 0.25 / 0.8, 0.25 / 0.8, 0.25 / 0.8])
    assert cue_weights(texts, y, [r"\bnice\b"], clip=5.0)[7] == 0  # no toxic text says "nice"
    assert cue_weights(["a", "b", "c", "d", "e", "f"], np.array([1, 1, 1, 1, 1, 0]), ["a|b|c|d|e"], clip=3.0)[5] == 0
    assert cue_weights(["a", "b", "c", "x", "y", "z"], np.array([1, 1, 1, 0, 0, 0]), ["[abcz]"], clip=2.0)[5] == 2.0
    for bad in (["("], []):
        with pytest.raises(MechtoxError, match="cue"):
            cue_weights(texts, y, bad)


@pytest.mark.parametrize("tokens", [False, True])
def test_fit_probe_weight_zero_is_leaving_out(tokens):
    """fit_probe with a per-text weight (0 for some training texts, 2 for others) against the same
    split with those texts removed and the others written out twice: the same probe and the same
    held-out metrics (the held-out texts stay, unweighted). Pooled rows and token rows."""
    from mechtox.probe import fit_probe

    rng = np.random.default_rng(11)
    n = 100
    y = np.tile([0, 1], n // 2)
    count = rng.integers(1, 4, n) if tokens else np.ones(n, int)
    text = np.repeat(np.arange(n), count)
    X = rng.standard_normal((len(text), 5)) + 0.9 * y[text][:, None] * (np.arange(5) < 2)
    tr, te = np.arange(70), np.arange(70, n)
    sw = np.where(np.arange(n) % 7 == 0, 0.0, np.where(np.arange(n) % 5 == 0, 2.0, 1.0))
    kw = dict(method="logreg", C=0.3, text_index=text if tokens else None)
    p = fit_probe(X, y, "h", split=(tr, te), sample_weight=sw, **kw)
    copies = np.concatenate([np.repeat(tr, sw[tr].astype(int)), te])  # the weighted texts, then the held-out ones
    rows = np.concatenate([np.flatnonzero(text == i) for i in copies])
    q = fit_probe(X[rows], y[copies], "h", split=(np.arange(len(copies) - 30), np.arange(len(copies) - 30, len(copies))),
                  **{**kw, "text_index": np.repeat(np.arange(len(copies)), count[copies]) if tokens else None})
    assert np.allclose(p.weight.numpy(), q.weight.numpy(), atol=1e-4) and p.bias == pytest.approx(q.bias, abs=1e-4)
    assert p.metrics["test_auroc"] == pytest.approx(q.metrics["test_auroc"])
    assert p.metrics["n_train"] == int((sw[tr] > 0).sum()) and p.metrics["n_test"] == 30
    plain = fit_probe(X, y, "h", split=(tr, te), **kw)
    assert not np.allclose(p.weight.numpy(), plain.weight.numpy(), atol=1e-3)
    # all weights 1 (the weighted code path) is the plain fit, with the regularization chosen by CV too
    ones = fit_probe(X, y, "h", split=(tr, te), sample_weight=np.ones(n), **{**kw, "C": "cv"})
    assert np.allclose(ones.weight.numpy(), fit_probe(X, y, "h", split=(tr, te), **{**kw, "C": "cv"}).weight.numpy(),
                       atol=1e-4)


def test_probe_command_drop_negatives_and_match_cue_on_tiny(tmp_path, capsys):
    """--drop-negatives and --match-cue: the non-toxic training texts they leave out and reweight
    are counted in the output and recorded in the probe's provenance; the probe differs from the
    plain one; bad patterns and --eval are one-line errors."""
    import csv

    from mechtox.models import tiny_model
    from mechtox.probe import Direction

    rows = [(f"you are a stupid idiot number {i}!", 1) for i in range(30)] + \
           [(f"shut up moron {i}", 1) for i in range(30)] + \
           [(f"please see the article talk page {i}", 0) for i in range(30)] + \
           [(f"thank you for the nice tea {i}", 0) for i in range(20)] + [(f"lovely weather {i}", 0) for i in range(10)]
    path = tmp_path / "d.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([("text", "label"), *rows])
    ws = ["-w", str(tmp_path / "ws"), "-q", "--model", "tiny"]
    common = ["--data", str(path), "--n-train", "all", "--n-test", "20", "--layers", "1", "--C", "0.1"]
    assert main(["probe", *ws, *common, "--out", "plain"]) == 0
    capsys.readouterr()
    assert main(["probe", *ws, *common, "--drop-negatives", "wikipedia", "--match-cue", "you",
                 "--match-cue", "exclaim", "--out", "shaped"]) == 0
    out = capsys.readouterr().out
    from mechtox.probe import split_indices

    y = np.array([lab for _, lab in rows])
    train = split_indices(y, 20, 0, 100)[0]  # the sweep's split (seed 0)
    dropped = sum(1 for i in train if y[i] == 0 and "article" in rows[i][0])
    assert 10 < dropped < 30 and f"of the training texts, {dropped} of the 50 non-toxic ones left out" in out
    assert "reweighted on you / exclaim" in out
    model = tiny_model()
    shaped = Direction.load(tmp_path / "ws" / "directions" / "shaped", model)
    plain = Direction.load(tmp_path / "ws" / "directions" / "plain", model)
    assert shaped.provenance["drop_negatives"] == "wikipedia" and shaped.provenance["match_cue"] == ["you", "exclaim"]
    assert shaped.metrics["n_train"] < plain.metrics["n_train"] == 100
    assert not np.allclose(shaped.weight.numpy(), plain.weight.numpy(), atol=1e-3)
    assert main(["report", "-w", str(tmp_path / "ws")]) == 0
    report = (tmp_path / "ws" / "report.html").read_text()
    assert f"Of the training texts, {dropped} of the 50 non-toxic ones left out" in report
    assert report.count("Of the training texts") == 1  # the plain probe's sweep has no such line
    for bad, match in ((["--drop-negatives", "("], "--drop-negatives '\\('"), (["--match-cue", "[a"], "--match-cue '\\[a'"),
                       (["--drop-negatives", "."], "finds every non-toxic training text"),
                       (["--eval", "plain", "--match-cue", "you"], "do not go with --eval")):
        assert main(["probe", *ws, *common, *bad]) == 2
        err = capsys.readouterr().err
        assert match.replace("\\", "") in err.replace("\\", "") and len(err.strip().splitlines()) == 1, err


def test_a_probe_scores_texts_at_the_length_it_was_fitted_on(tiny, tmp_path, capsys):
    """ProbeScorer reads as many tokens of each text as the probe was fitted on (it read 64 whatever
    the fit); probe --eval says when --max-length differs from the fit's."""
    from mechtox.activations import collect_activations
    from mechtox.data import load_labelled
    from mechtox.probe import Probe, ProbeScorer, probe_sweep

    data = load_labelled("builtin:toxicity")
    probe = probe_sweep(tiny, data, layers=[1], max_length=6, test_size=60, train_size=120, progress=False).best
    long_texts = ["you are a stupid idiot and a dumb moron and an ugly jerk and a loser", "thanks for the help with "
                  "the page about the history of the city and the river and the music"]
    scorer = ProbeScorer(tiny, probe)
    assert scorer.max_length == 6 and ProbeScorer(tiny, probe, max_length=20).max_length == 20
    acts = collect_activations(tiny, long_texts, [probe.hook_name], probe.pooling, 16, 6, progress=False)
    np.testing.assert_allclose(scorer.logits(long_texts), probe.logits(acts[probe.hook_name].double()).numpy(),
                               rtol=1e-6)
    assert ProbeScorer(tiny, Probe(probe.vector, probe.hook_name, "logreg", weight=probe.weight)).max_length == 64

    ws = ["-w", str(tmp_path / "ws"), "-q", "--model", "tiny"]
    assert main(["probe", *ws, "--data", "builtin:toxicity", "--n-train", "120", "--n-test", "60", "--layers", "last",
                 "--max-length", "16"]) == 0
    capsys.readouterr()
    assert main(["probe", *ws, "--eval", "probe", "--data", "builtin:toxicity", "--limit", "40"]) == 0
    assert "cut to" not in capsys.readouterr().out  # read as fitted: 16 tokens
    meta = json.loads((tmp_path / "ws" / "runs" / "probe-eval-probe-toxicity" / "probe-eval.json").read_text())
    assert meta["max_length"] == 16
    assert main(["probe", *ws, "--eval", "probe", "--data", "builtin:toxicity", "--limit", "40",
                 "--max-length", "64"]) == 0
    assert ("texts read to 64 tokens (--max-length), the probe was fitted on texts cut to 16: its scores shift with "
            "the length; leave out --max-length" in capsys.readouterr().out)


def test_held_out_and_transfer_texts_seen_in_training_are_left_out_of_the_metrics(tiny):
    """A held-out text that repeats a training text (white space aside), or a transfer text the probe was
    fitted on, would score as training data: the sweep leaves both out of its metrics and says how many.
    The metrics equal scikit-learn's AUROC of ProbeScorer's logits on the texts it keeps."""
    from sklearn.metrics import roc_auc_score

    from mechtox.data import LabelledTexts
    from mechtox.probe import ProbeScorer, probe_sweep, split_indices

    from .conftest import synthetic_labelled

    base = synthetic_labelled(160, seed=3)
    tr, te = split_indices(base.labels, 60, 0, 100)
    texts, labels = list(base.texts), base.labels.copy()
    for i, j in zip(tr[:10], te[:10], strict=True):  # ten held-out rows become copies of training texts
        texts[j], labels[j] = f"  {texts[i]} ", labels[i]
    data = LabelledTexts(texts, labels, "with repeats")
    fresh = synthetic_labelled(40, seed=11)
    assert not set(fresh.texts) & set(texts)
    transfer = LabelledTexts([texts[i] for i in tr[:20]] + fresh.texts,
                             np.concatenate([labels[tr[:20]], fresh.labels]), "transfer")
    sweep = probe_sweep(tiny, data, layers=[1], include_final=False, max_length=12, split=(tr, te),
                        transfer=transfer, progress=False)
    row = sweep.table.iloc[0]
    kept = te[10:]
    scorer = ProbeScorer(tiny, sweep.best, max_length=12)
    assert int(row["n_train"]) == 100 and int(row["n_test"]) == 50
    assert row["test_auroc"] == pytest.approx(roc_auc_score(labels[kept], scorer.logits([texts[i] for i in kept])),
                                              abs=1e-6)
    assert row["transfer_auroc"] == pytest.approx(roc_auc_score(fresh.labels, scorer.logits(fresh.texts)), abs=1e-6)
    assert sweep.notes == ("10 held-out texts repeat training texts and are left out of the test metrics",
                           "20 of the 60 transfer texts (transfer) are training texts and are left out of the "
                           "transfer AUROC")


def test_without_repeats_keeps_a_split_without_them_and_refuses_one_label_left():
    from mechtox.errors import MechtoxError
    from mechtox.probe import without_repeats

    texts = ["a b", "c d", "e f", "g h", " a b\n", "i j"]
    split = (np.array([0, 1, 2]), np.array([3, 4, 5]))
    (tr, te), n = without_repeats(texts, split)
    assert n == 1 and tr.tolist() == [0, 1, 2] and te.tolist() == [3, 5]
    assert without_repeats(["x", "y", "z"], (np.array([0]), np.array([1, 2])))[1] == 0
    with pytest.raises(MechtoxError, match="1 of the 3 held-out texts repeat training texts, and without them the "
                                           "held-out set has one label only"):
        without_repeats(texts, split, labels=np.array([0, 1, 0, 0, 1, 0]))


def test_probe_command_says_what_it_left_out_as_seen_in_training(tmp_path, capsys):
    """Every text twice in the file: the held-out copies of training texts are left out, and so are the
    --eval-data texts the probe was fitted on; the saved sweep counts what the metrics kept."""
    import pandas as pd

    from mechtox.data import load_labelled

    data = load_labelled("builtin:toxicity")
    f = tmp_path / "twice.csv"
    pd.DataFrame({"text": list(data.texts) * 2, "label": np.tile(data.labels, 2)}).to_csv(f, index=False)
    ws = ["-w", str(tmp_path / "ws"), "-q", "--model", "tiny"]
    assert main(["probe", *ws, "--data", str(f), "--n-train", "200", "--n-test", "100", "--layers", "last",
                 "--eval-data", str(f)]) == 0
    out = capsys.readouterr().out
    sweep = (tmp_path / "ws" / "directions" / "probe" / "sweep.csv").read_text().splitlines()
    n_test = int(sweep[1].split(",")[sweep[0].split(",").index("n_test")])
    repeats = 100 - n_test
    assert repeats > 0 and f"{repeats} of the 100 held-out texts repeat training texts" in out, out
    assert f"200 train / {n_test} test" in out
    assert "of the --eval-data texts are training texts and are left out of the transfer AUROC" in out
