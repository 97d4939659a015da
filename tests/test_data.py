import json

import numpy as np
import pytest
import torch

from mechtox import data as D
from mechtox.errors import DataError

from .conftest import shared_file


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_builtin_data_loads():
    lab = D.load_labelled("builtin:toxicity")
    assert len(lab) == 240 and set(lab.labels.tolist()) == {0, 1}
    first = D.load_labelled("builtin:toxicity", limit=7)
    assert first.texts == lab.texts[:7] and first.labels.tolist() == lab.labels[:7].tolist()
    assert len(D.load_labelled("builtin:toxicity", limit=10_000)) == 240
    ps = D.load_prompts("builtin:prompts")
    assert len(ps) == 30 and all(isinstance(p, str) for p in ps.prompts)
    assert len(D.load_text("builtin:text").split()) > 300


def test_csv_tsv_jsonl_and_columns(tmp_path):
    csv = write(tmp_path / "a.csv", "comment,tox\nhello,0\nyou idiot,1\n")
    lab = D.load_labelled(csv, text_col="comment", label_col="tox")
    assert lab.texts == ["hello", "you idiot"] and lab.labels.tolist() == [0, 1]
    tsv = write(tmp_path / "a.tsv", "text\tlabel\nhi\t0.1\nshut up\t0.9\n")
    assert D.load_labelled(tsv).labels.tolist() == [0, 1]  # scores thresholded at 0.5
    at = write(tmp_path / "at.tsv", "text\tlabel\nhi\t0.49\nshut up\t0.5\nyou fool\t0.7\n")
    assert D.load_labelled(at).labels.tolist() == [0, 1, 1]  # Civil Comments' rule: toxic when >= 0.5
    assert D.load_labelled(at, threshold=0.7).labels.tolist() == [0, 0, 1]
    jl = write(tmp_path / "a.jsonl", '{"text": "hi", "label": "non-toxic"}\n\n{"text": "jerk", "label": "toxic"}\n')
    assert D.load_labelled(jl).labels.tolist() == [0, 1]
    with pytest.raises(DataError, match=r"no column 'body' \(columns: comment, tox;.*pass --text-col"):
        D.load_labelled(csv, text_col="body", label_col="tox")


def test_the_common_data_sets_own_columns_are_found_without_flags(tmp_path):
    """Jigsaw's Kaggle CSV (comment_text, toxic and five other labels), OLID as released (tweet,
    subtask_a with OFF / NOT) and Civil Comments (text, toxicity scores) read without --text-col /
    --label-col; before, each was 'no column text'. The columns used are in the source."""
    jig = write(tmp_path / "train.csv", "id,comment_text,toxic,severe_toxic,insult\n"
                                        "a1,hello there,0,0,0\na2,you idiot,1,0,1\na3,thanks,0,0,0\n")
    got = D.load_labelled(jig)
    assert got.texts == ["hello there", "you idiot", "thanks"] and got.labels.tolist() == [0, 1, 0]
    assert got.source == f"{jig} (comment_text / toxic)"
    olid = write(tmp_path / "olid.tsv", "id\ttweet\tsubtask_a\tsubtask_b\n1\t@USER nice\tNOT\tNULL\n"
                                        "2\t@USER shut up\tOFF\tUNT\n")
    assert D.load_labelled(olid).labels.tolist() == [0, 1]
    civil = write(tmp_path / "civil.jsonl", '{"text": "fine", "toxicity": 0.1}\n{"text": "jerk", "toxicity": 0.8}\n')
    assert D.load_labelled(civil).labels.tolist() == [0, 1]
    both = write(tmp_path / "both.csv", "comment_text,text,toxic,label\nx,hello,1,0\ny,idiot,0,1\n")
    assert D.load_labelled(both).texts == ["hello", "idiot"]  # text and label come first
    assert D.load_labelled(both).source == str(both)
    assert D.load_labelled(both, text_col="comment_text", label_col="toxic").labels.tolist() == [1, 0]


@pytest.mark.parametrize("content,suffix,match", [
    ("text,lab\nhi,0\n", ".csv", r"no column named label / toxic / .*\(columns: lab, text;.*pass --label-col"),
    ("", ".csv", "is empty"),
    ("text,label\n", ".csv", "no data rows"),
    ("text,label\nhi,0\nho,0\n", ".csv", "only one class"),
    ('{"text": "a", "label": 0}\n{"text": "b", "label": 1\n', ".jsonl", r":2: bad JSON line"),
    ('{"text": "a", "label": 0}\n[1, 2]\n', ".jsonl", r":2: expected a JSON object"),
    ("text,label\nhi,0\n,1\n", ".csv", r":3: empty or missing text"),
    ("text,label\nhi,0\nyo,maybe\n", ".csv", r":3: label 'maybe'"),
    ("text,label\nhi,0\nyo,nan\n", ".csv", r":3: label is NaN"),
    ("text,label\nhi,0\nyo,1\nhey,2\n", ".csv", r":4: label '2' is outside \[0, 1\].*multi-class"),
    ("text,label\nhi,0\nyo,-1\n", ".csv", r":3: label '-1' is outside \[0, 1\]"),
    ("hi\t0\nyo\t1\n", ".tsv", r"no column named text / comment_text / .* \(columns: 0, hi; the first row is the header\)"),
    # an unquoted comma in a text: the row had read as text 'hello' with label ' you idiot'
    ("text,label\nhello, you idiot,1\nfine,0\n", ".csv", r":2: 3 fields but the header has 2; put a text that "
                                                       "contains a comma in double quotes"),
    ("text\tlabel\nfine\t0\na\tb\t1\n", ".tsv", r":3: 3 fields but the header has 2;.* contains a tab"),
])
def test_malformed_labelled_files(tmp_path, content, suffix, match):
    path = write(tmp_path / f"bad{suffix}", content)
    with pytest.raises(DataError, match=match) as e:
        D.load_labelled(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_one_label_alone_reads_where_both_are_not_needed(tmp_path):
    path = write(tmp_path / "toxic.csv", "text,label\nyou idiot,1\nshut up,1\n")
    with pytest.raises(DataError, match="only one class"):
        D.load_labelled(path)
    assert D.load_labelled(path, both_labels=False).labels.tolist() == [1, 1]


def test_long_texts_utf16_spreadsheets_and_padded_headers_read(tmp_path):
    """A text longer than csv's default field limit (131,072 characters: 'malformed CSV'), a
    spreadsheet's "Unicode text" (UTF-16 with its mark: 'not readable UTF-8') and a header with
    spaces around its names ('no column text') read; a header naming a column twice (the last one
    was taken silently), a non-UTF-8 file and a text that is not a string are one-line errors."""
    long = D.load_labelled(write(tmp_path / "long.csv", "text,label\n" + "a" * 200_000 + ",1\nhi,0\n"))
    assert len(long.texts[0]) == 200_000
    u16 = tmp_path / "u16.tsv"
    u16.write_bytes("text\tlabel\ncafé\t1\nhi\t0\n".encode("utf-16"))
    assert D.load_labelled(u16).texts == ["café", "hi"]
    assert D.load_labelled(write(tmp_path / "pad.csv", " text , label \na,1\nb,0\n")).texts == ["a", "b"]
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,label\ncafé,1\nb,0\n".encode("latin-1"))
    for path, match in ((write(tmp_path / "dup.csv", "text,text,label\nx,y,1\nz,w,0\n"),
                         "the header names 'text' more than once"),
                        (latin, r"not readable UTF-8 text \(UnicodeDecodeError at byte 14\); save it as UTF-8"),
                        (write(tmp_path / "n.jsonl", '{"text": {"a": 1}, "label": 1}\n{"text": "b", "label": 0}\n'),
                         r":1: the text is a dict \(\{\"a\": 1\}\), not a string")):
        with pytest.raises(DataError, match=match):
            D.load_labelled(path)


def test_text_for_perplexity_from_a_table_is_its_text_column(tmp_path):
    """`eval --text comments.csv` measured the perplexity of the file's syntax (header, commas, JSON
    braces); now of its texts, joined by blank lines. A table without a text column is an error."""
    csv_text = D.load_text(write(tmp_path / "t.csv", "id,comment_text,toxic\n1,first comment,0\n2,,1\n3,third one,1\n"))
    assert csv_text == "first comment\n\nthird one"
    assert D.load_text(write(tmp_path / "t.jsonl", '{"text": "a b"}\n{"text": "c"}\n')) == "a b\n\nc"
    assert D.load_text(write(tmp_path / "t.txt", "id,text\nplain text stays as it is\n")).startswith("id,text")
    with pytest.raises(DataError, match=r"no column named text / comment_text .*pass a .txt/.raw file"):
        D.load_text(write(tmp_path / "w.jsonl", '{"prompt": "a", "gold": "b"}\n'))


def test_spreadsheet_csv_with_byte_order_mark_or_semicolons(tmp_path):
    """Excel's "CSV UTF-8" begins with a byte-order mark; in locales with decimal commas it separates
    with semicolons; a tab-separated file is often named .csv. All read as the plain file does; a
    semicolon inside a comma file's text stays text, and so does a comma inside a tab file's text."""
    plain = D.load_labelled(write(tmp_path / "plain.csv", "text,label\nhello,0\nyou idiot,1\n"))
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + b"text,label\nhello,0\nyou idiot,1\n")
    semi = write(tmp_path / "semi.csv", "text;label\nhello;0\nyou idiot;1\n")
    tabs = write(tmp_path / "tabs.csv", "text\tlabel\nhello\t0\nyou idiot\t1\n")
    for path in (bom, semi, tabs):
        got = D.load_labelled(path)
        assert got.texts == plain.texts and got.labels.tolist() == plain.labels.tolist()
    mixed = D.load_labelled(write(tmp_path / "mixed.csv", "text,label\n\"hi; there\",0\n\"a; b, c\",1\n"))
    assert mixed.texts == ["hi; there", "a; b, c"]
    assert D.load_labelled(write(tmp_path / "t.csv", "text\tlabel\nhi, there\t0\na, b; c\t1\n")).texts == [
        "hi, there", "a, b; c"]


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(DataError, match="no such data file"):
        D.load_labelled(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="unknown format"):
        D.load_labelled(write(tmp_path / "a.xml", "<a/>"))
    with pytest.raises(DataError, match="is a directory"):
        D.load_labelled(tmp_path)


def test_a_bare_name_of_a_data_folder_file_says_to_write_data_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no jigsaw_balanced.csv here; the shipped bundle (at least) has one
    with pytest.raises(DataError, match=r"no such data file: jigsaw_balanced.csv; .* pass data:jigsaw_balanced.csv$"):
        D.load_labelled("jigsaw_balanced.csv")
    assert len(D.load_labelled("data:jigsaw_balanced.csv")) == 12_180
    with pytest.raises(DataError, match=r"no such data file: nope.csv$"):  # no hint for a name no folder has
        D.load_labelled("nope.csv")


@pytest.mark.parametrize("loader", ["load_labelled", "load_prompts", "load_pairs", "load_text"])
def test_an_empty_source_says_so_and_how_to_get_the_default(loader):
    with pytest.raises(DataError, match=r"^the data source is empty; leave the flag out"):
        getattr(D, loader)("  ")


def test_hf_id_failing_on_a_reachable_hub_is_clear(monkeypatch):
    import datasets

    def fails(*a, **k):
        raise ConnectionError("no such data set")

    monkeypatch.setattr(D, "_hub_reachable", lambda: True)
    monkeypatch.setattr(datasets, "load_dataset", fails)
    with pytest.raises(DataError, match="could not be loaded from the HF hub.*local CSV.*jigsaw_balanced.csv") as e:
        D.load_labelled("someone/some-dataset")
    assert "\n" not in str(e.value)


def test_rtp_prompts_with_scores(tmp_path):
    rows = [{"prompt": {"text": "So I said", "toxicity": 0.7}, "continuation": {"text": " you idiot", "toxicity": 0.9, "insult": 0.95}},
            {"prompt": {"text": "The river", "toxicity": 0.01}, "continuation": {"text": " flows", "toxicity": 0.02}}]
    path = write(tmp_path / "rtp.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    ps = D.load_prompts(path)
    assert ps.prompts == ["So I said", "The river"]
    np.testing.assert_allclose(ps.prompt_toxicity, [0.7, 0.01])
    np.testing.assert_allclose(ps.continuation_toxicity, [0.9, 0.02])
    assert ps.continuation_scores[0]["insult"] == 0.95
    assert len(ps.head(1)) == 1 and ps.head(1).continuation_toxicity.shape == (1,)
    sub = ps.subset([1], "clean")
    assert sub.prompts == ["The river"] and sub.continuations == [" flows"] and sub.source.endswith("[clean]")
    np.testing.assert_allclose(sub.prompt_toxicity, [0.01])
    assert sub.continuation_scores[0]["toxicity"] == 0.02
    plain = write(tmp_path / "p.jsonl", '{"prompt": "Hello"}\n')
    assert D.load_prompts(plain).prompt_toxicity is None
    with pytest.raises(DataError, match=r":1: no prompt text"):
        D.load_prompts(write(tmp_path / "q.jsonl", '{"text": "Hello"}\n'))
    # a score that is no number was a ValueError from float(); one outside [0, 1] was taken
    for score, match in (('"x"', r":2: prompt: toxicity 'x' is not a score in \[0, 1\]"),
                         ("2.5", r":2: prompt: toxicity 2.5 is not a score")):
        bad = write(tmp_path / "s.jsonl", '{"prompt": {"text": "a", "toxicity": 0.1}}\n'
                                          f'{{"prompt": {{"text": "b", "toxicity": {score}}}}}\n')
        with pytest.raises(DataError, match=match):
            D.load_prompts(bad)
    with pytest.raises(DataError, match=r":1: continuation: toxicity True"):
        D.load_prompts(write(tmp_path / "c.jsonl", '{"prompt": "a", "continuation": {"text": "b", "toxicity": true}}\n'))


def test_real_rtp_file():
    ps = D.load_prompts(shared_file("rtp_challenge.jsonl"))
    assert len(ps) == 1196 and ps.continuation_toxicity is not None
    assert np.isfinite(ps.prompt_toxicity).mean() > 0.99


def test_pairs_trl_and_paradetox(tmp_path):
    path = write(tmp_path / "p.jsonl", json.dumps({"prompt": "Hi", "chosen": " there", "rejected": " idiot", "score": 1}) + "\n")
    pairs = D.load_pairs(path)
    assert pairs.chosen == [" there"] and pairs.extra[0] == {"score": 1}
    D.save_pairs(pairs, tmp_path / "out.jsonl")
    assert D.load_pairs(tmp_path / "out.jsonl").to_rows() == pairs.to_rows()
    tsv = write(tmp_path / "pd.tsv", "toxic\tneutral1\tneutral2\nyou fool\tyou are wrong\t\n\t\t\n")
    pd_pairs = D.load_pairs(tsv)
    assert pd_pairs.rejected == [" you fool"] and pd_pairs.chosen == [" you are wrong"] and pd_pairs.prompt == [""]
    with pytest.raises(DataError, match="no column 'rejected'"):
        D.load_pairs(write(tmp_path / "b.jsonl", '{"prompt": "a", "chosen": "b"}\n'))


def test_real_paradetox():
    pairs = D.load_pairs(shared_file("paradetox.tsv"), limit=50)
    assert len(pairs) == 50 and all(pairs.rejected) and all(pairs.chosen)


def test_tokenize_masks_and_padding_sides(tiny):
    texts = ["you are a stupid idiot", "thanks"]
    right = D.tokenize(tiny, texts, padding_side="right")
    left = D.tokenize(tiny, texts, padding_side="left")
    assert right.attention_mask.tolist() == [[1] * 5, [1, 0, 0, 0, 0]]
    assert left.attention_mask.tolist() == [[1] * 5, [0, 0, 0, 0, 1]]
    assert right.tokens[1, 0] == left.tokens[1, -1]
    assert right.lengths.tolist() == [5, 1]
    trunc = D.tokenize(tiny, texts, max_length=2, truncate="left")
    assert trunc.tokens[0].tolist() == D.encode(tiny, texts)[0][-2:]
    bos = D.encode(tiny, ["thanks"], prepend_bos=True)[0]
    assert bos[0] == tiny.tokenizer.bos_token_id and len(bos) == 2


def test_pad_id_is_not_used_as_mask(tiny):
    # a real token equal to the pad id must stay unmasked: masks come from lengths
    batch = D.pad([[0, 5, 0], [7]], pad_id=0)
    assert batch.attention_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert torch.equal(batch.lengths, torch.tensor([3, 1]))
