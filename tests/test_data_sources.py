"""Where the default data comes from: flags, $MECHTOX_DATA, shared/data beside the project, the
shipped real-data bundle; gzipped files; HF ids online (mapped columns) and offline (one line)."""

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest

from mechtox import data as D
from mechtox.errors import DataError

from .conftest import REPO, shared_file


@pytest.fixture
def fresh_announcements(monkeypatch):
    monkeypatch.setattr(D, "_ANNOUNCED", set())


def _folder(path: Path, rows: str) -> Path:
    path.mkdir(parents=True)
    (path / "jigsaw_balanced.csv").write_text(rows, encoding="utf-8")
    return path


def test_resolution_order_flag_env_project_bundle(tmp_path, monkeypatch, capsys, fresh_announcements):
    env = _folder(tmp_path / "env", "text,label\nenv a,0\nenv b,1\n")
    beside = _folder(tmp_path / "beside", "text,label\nbeside a,0\nbeside b,1\n")
    flag = _folder(tmp_path / "flag", "text,label\nflag a,0\nflag b,1\n")
    monkeypatch.setattr(D, "_beside_project", lambda: [tmp_path / "missing", beside])
    monkeypatch.setenv("MECHTOX_DATA", str(env))
    assert D.data_file("jigsaw_balanced.csv", flag) == str(flag / "jigsaw_balanced.csv")
    assert D.load_labelled().texts == ["env a", "env b"]
    (env / "jigsaw_balanced.csv").unlink()  # a file missing from $MECHTOX_DATA comes from the next folder
    assert D.load_labelled().texts == ["beside a", "beside b"]
    monkeypatch.delenv("MECHTOX_DATA")
    (beside / "jigsaw_balanced.csv").unlink()
    bundled = D.data_file("jigsaw_balanced.csv")
    assert bundled == str(D.bundled_data_dir() / "jigsaw_balanced.csv.gz")
    D.data_file("jigsaw_balanced.csv")  # announced once only
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("data: ")]
    assert lines == [f"data: {flag} (--data-dir)", f"data: {env} ($MECHTOX_DATA)",
                     f"data: {beside} (shared/data beside the project)",
                     f"data: {D.bundled_data_dir()} (the real-data bundle shipped with mechtox)"]


def test_project_folder_comes_from_the_package_not_the_working_directory(tmp_path, monkeypatch):
    before = D._beside_project()
    assert before == [REPO.parent / "shared" / "data", REPO / "shared" / "data"]
    monkeypatch.chdir(tmp_path)
    assert D._beside_project() == before
    monkeypatch.delenv("MECHTOX_DATA", raising=False)
    assert [d.path for d in D.data_dirs()] == [p for p in before if p.is_dir()] + [D.bundled_data_dir()]


def test_bad_data_folder_and_missing_file_are_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("MECHTOX_DATA", str(tmp_path / "nope"))
    with pytest.raises(DataError, match=r"\$MECHTOX_DATA .*nope is not a folder.*unset it") as e:
        D.load_prompts()
    assert "\n" not in str(e.value)
    monkeypatch.delenv("MECHTOX_DATA")
    with pytest.raises(DataError, match="--data-dir .* is not a folder"):
        D.data_file("jigsaw_balanced.csv", tmp_path / "nope")
    with pytest.raises(DataError, match=r"no data file 'olid_test.csv' in .*bundle"):
        D.load_labelled("data:olid_test.csv")


def test_builtin_toy_data_only_when_asked(fresh_announcements, capsys):
    assert D.data_file("jigsaw_balanced.csv", "builtin") == "builtin:toxicity"
    assert len(D.load_labelled(D.data_file("jigsaw_balanced.csv", "builtin"))) == 240
    assert "toy data" in capsys.readouterr().out
    with pytest.raises(DataError, match="no stand-in for 'paradetox.tsv'"):
        D.data_file("paradetox.tsv", "builtin")


def test_bundle_is_real_data_and_small(monkeypatch):
    monkeypatch.setattr(D, "_beside_project", lambda: [])
    monkeypatch.delenv("MECHTOX_DATA", raising=False)
    bundle = D.bundled_data_dir()
    total = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
    assert total < 10 * 2**20
    assert (bundle / "SOURCES.md").is_file() and any((bundle / "licenses").iterdir())
    lab = D.load_labelled()
    assert lab.source.endswith("jigsaw_balanced.csv.gz") and len(lab) >= 3000
    assert abs(lab.labels.mean() - 0.5) < 0.05  # stratified: both classes alike
    ps = D.load_prompts()
    assert len(ps) == 1196 and ps.continuation_toxicity is not None
    assert np.nanmean(ps.prompt_toxicity) > 0.5  # the challenge set: toxic prompts, with Perspective scores
    assert len(D.load_prompts("data:rtp_nontoxic.jsonl")) == 1200
    assert len(D.load_pairs()) >= 1000
    assert len(D.load_text()) > 1_000_000
    prompts, golds = D.load_wiki_samples()
    assert len(prompts) == len(golds) == 2064
    assert D.is_wiki_samples(D.data_file("wiki_samples.jsonl"))
    assert not D.is_wiki_samples(D.data_file("rtp_challenge.jsonl"))


@pytest.mark.parametrize("name", sorted(D.DEFAULT_FILES.values()))
def test_bundle_equals_the_shared_data(name):
    real = shared_file(name)
    assert gzip.decompress((D.bundled_data_dir() / f"{name}.gz").read_bytes()) == real.read_bytes()


def test_gzipped_files_read_transparently(tmp_path):
    def gz(name, text):
        (tmp_path / name).write_bytes(gzip.compress(text.encode()))
        return tmp_path / name

    assert D.load_labelled(gz("a.csv.gz", "text,label\nhi,0\nyou fool,1\n")).labels.tolist() == [0, 1]
    assert D.load_prompts(gz("p.jsonl.gz", json.dumps({"prompt": {"text": "So", "toxicity": 0.5}}) + "\n")).prompts == ["So"]
    assert D.load_text(gz("t.raw.gz", "some text\n")) == "some text\n"
    assert D.load_pairs(gz("d.tsv.gz", "toxic\tneutral1\nyou fool\tyou are wrong\n")).chosen == [" you are wrong"]
    broken = tmp_path / "broken.csv.gz"
    broken.write_bytes(b"\x1f\x8b not gzip")
    with pytest.raises(DataError, match="broken.csv.gz is not readable UTF-8 text"):
        D.load_labelled(broken)


def test_binary_file_is_a_one_line_error(tmp_path):
    path = tmp_path / "model.csv"
    path.write_bytes(os.urandom(64) + b"\xff\xfe\xfa")
    with pytest.raises(DataError, match=r"model.csv is not readable UTF-8 text") as e:
        D.load_labelled(path)
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- HF ids


def _fake_hub(monkeypatch, tables):
    import datasets

    calls = []

    def load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        return datasets.Dataset.from_dict(tables[name])

    monkeypatch.setattr(D, "_hub_reachable", lambda: True)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_hub_ids_of_every_data_flag_with_their_columns(monkeypatch):
    calls = _fake_hub(monkeypatch, {
        "google/jigsaw_toxicity_pred": {"comment_text": ["a", "b"], "toxic": [0, 1]},
        "allenai/real-toxicity-prompts": {"prompt": [{"text": "So I", "toxicity": 0.8}],
                                          "continuation": [{"text": " said", "toxicity": 0.1}]},
        "s-nlp/paradetox": {"en_toxic_comment": ["you fool", "x"], "en_neutral_comment": ["you are wrong", ""]},
        "wikitext": {"text": ["= Title =", "", "Some text ."]},
    })
    lab = D.load_labelled("google/jigsaw_toxicity_pred")
    assert lab.texts == ["a", "b"] and lab.labels.tolist() == [0, 1] and lab.source.startswith("hf:")
    ps = D.load_prompts("allenai/real-toxicity-prompts")
    assert ps.prompts == ["So I"] and ps.prompt_toxicity.tolist() == [0.8] and ps.continuations == [" said"]
    pairs = D.load_pairs("s-nlp/paradetox")
    assert (pairs.rejected, pairs.chosen, pairs.prompt) == ([" you fool"], [" you are wrong"], [""])
    assert D.load_text("wikitext") == "= Title =\nSome text ."
    assert calls == [("google/jigsaw_toxicity_pred", None, "train"), ("allenai/real-toxicity-prompts", None, "train"),
                     ("s-nlp/paradetox", None, "train"), ("wikitext", "wikitext-2-raw-v1", "test")]


@pytest.mark.parametrize("loader,hub_id,default", [
    (D.load_labelled, "google/jigsaw_toxicity_pred", "jigsaw_balanced.csv"),
    (D.load_prompts, "allenai/real-toxicity-prompts", "rtp_challenge.jsonl"),
    (D.load_pairs, "s-nlp/paradetox", "paradetox.tsv"),
    (D.load_text, "wikitext", "wikitext2_test.raw"),
])
def test_hub_ids_offline_fail_in_one_line_naming_the_default(monkeypatch, tmp_path, loader, hub_id, default):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match=f"cannot be reached.*default {default} \\(shipped with mechtox\\)") as e:
        loader(hub_id)
    assert "\n" not in str(e.value)


def test_wiki_samples_are_told_by_their_first_line(tmp_path):
    good = tmp_path / "w.jsonl.gz"
    good.write_bytes(gzip.compress(b'\n{"prompt": "a", "gold": "b"}\n{"broken'))  # only the first row is read
    assert D.is_wiki_samples(good)
    (tmp_path / "p.jsonl").write_text('{"prompt": "a"}\n')
    assert not D.is_wiki_samples(tmp_path / "p.jsonl")
    (tmp_path / "b.jsonl").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(DataError, match="not readable UTF-8"):
        D.is_wiki_samples(tmp_path / "b.jsonl")
