"""How often a measurement met texts its probe or model had been fitted on, before session 33 made
mechtox leave them out (`mechtox.probe.without_repeats`, the Goodhart check's filter) or say so
(`n_prompts_trained_on`). No model is loaded: the splits are made as the commands make them.

Usage:  python seen.py > seen.log   # a few seconds
"""
from mechtox._io import text_hashes
from mechtox.data import load_labelled, load_pairs, load_prompts, load_wiki_samples
from mechtox.jobs.main import SIZES
from mechtox.probe import split_indices, stratified_subset, without_repeats

jigsaw = load_labelled("data:jigsaw_balanced.csv")
print("# the main job: its probe, then the probe check after DPO (Goodhart), both from Jigsaw")
for size, S in SIZES.items():
    n_train, n_test, n_check = S["n_train"], S["n_test"], S.get("goodhart_n", S["n_train"])
    data = stratified_subset(jigsaw, n_train + n_test, 0)
    split = split_indices(data.labels, n_test, 0, n_train)
    repeats = without_repeats(data.texts, split)[1]
    fitted = set(text_hashes([data.texts[i] for i in split[0]]))
    line = f"{size:>6}: probe {n_train} train / {n_test} held out, {repeats} held-out repeats of training texts"
    if n_check:
        check = stratified_subset(jigsaw, n_check, 1)  # as mechtox.jobs.train._goodhart drew them before
        _, te = split_indices(check.labels, 0.25, 0)
        seen = sum(h in fitted for h in text_hashes([check.texts[i] for i in te]))
        line += (f"; probe check on {n_check} texts: {seen} of its {len(te)} held-out texts were the probe's "
                 f"training texts ({100 * seen / len(te):.0f}%)")
    print(line)

print("# duplicate texts (surrounding white space aside) in the labelled files")
for name in ("data:jigsaw_balanced.csv", "data:olid_train.csv"):
    d = load_labelled(name)
    print(f"{name}: {len(d)} rows, {len(d) - len(set(text_hashes(d.texts)))} repeats")

print("# prompts of the default pair sources that are also mechtox eval's default prompts")
challenge = set(text_hashes(load_prompts("data:rtp_challenge.jsonl").prompts))
wiki = load_wiki_samples("data:wiki_samples.jsonl")[0]
paradetox = [p for p in load_pairs("data:paradetox.tsv").prompt if p.strip()]
print(f"wiki_samples.jsonl (mechtox pairs): {sum(h in challenge for h in text_hashes(wiki))} of {len(wiki)}; "
      f"paradetox.tsv (the main job): {len(paradetox)} non-empty prompts")
