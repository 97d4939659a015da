# %% [markdown]
# # What DPO changed, neuron by neuron (Yang et al. 2024)
# Pairs (greedy vs steered toward toxicity), a short DPO, then the per-neuron attribution with
# both denominators. Paper (GPT-2 medium): TP- 31.8%, TN+ 23.9%, AP+ 7.0%, AN- 37.3% of the gross
# reduction. Offline this is a short DPO on a few hundred pairs: see docs/results.md.

# %%
import copy
import shutil

from _common import RESULTS, N, data_file, load

import mechtox as mt
from mechtox.attribution import attribute
from mechtox.data import PreferencePairs
from mechtox.directions import token_log_odds, token_sets, unembedding_direction
from mechtox.generation import generate
from mechtox.interventions import applied, steer
from mechtox.training import DPOObjective, TrainConfig, train

model = load()
data = mt.load_labelled(data_file("jigsaw_balanced.csv", "builtin:toxicity")).subset(range(N["train"]))
w = unembedding_direction(model, token_sets(token_log_odds(model, data), N["k_tokens"]))
prompts = mt.load_prompts(data_file("rtp_nontoxic.jsonl", "builtin:prompts"), limit=N["pairs"]).prompts
good = generate(model, prompts, N["new_tokens"])
with applied(model, steer(w, 8.0)):
    bad = generate(model, prompts, N["new_tokens"])
keep = [i for i in range(len(prompts)) if good.continuations[i].strip() and bad.continuations[i].strip()]
pairs = PreferencePairs([prompts[i] for i in keep], [good.continuations[i] for i in keep],
                        [bad.continuations[i] for i in keep], "generated")
shutil.rmtree(RESULTS / "04_dpo_state", ignore_errors=True)
after = copy.deepcopy(model)
cfg = TrainConfig(lr=2e-5, batch_size=8, max_steps=N["steps"], warmup_steps=2, eval_every=0, val_fraction=0.0)
train(after, DPOObjective(after, pairs, cfg), cfg, RESULTS / "04_dpo_state")
test_prompts = mt.load_prompts(data_file("rtp_challenge.jsonl", "builtin:prompts"), limit=N["prompts"]).prompts
for mode in ("own", "shared"):
    res = attribute(model, after, w, test_prompts, mode=mode, max_new_tokens=N["new_tokens"])
    print(f"\n{mode} tokens; exactness {res.check}")
    print(res.groups[["group", "n", "contribution", "share_of_gross", "share_of_net"]].to_string(index=False))
    res.groups.to_csv(RESULTS / f"04_groups_{mode}.csv", index=False)
