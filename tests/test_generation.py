import pytest

from mechtox.errors import MechtoxError
from mechtox.generation import generate

PROMPTS = ["you are a stupid idiot", "thanks", "the river and the city is good", "shut up you", "first day"]


@pytest.mark.parametrize("fixture", ["tiny", "tiny_llama"])
def test_batched_equals_alone(fixture, request):
    model = request.getfixturevalue(fixture)
    batched = generate(model, PROMPTS, max_new_tokens=6, batch_size=5, stop_at_eos=False, progress=False)
    for i, p in enumerate(PROMPTS):
        alone = generate(model, [p], max_new_tokens=6, stop_at_eos=False, progress=False)
        assert alone.continuation_ids[0] == batched.continuation_ids[i]
    assert batched.prompts == PROMPTS


def test_matches_full_forward_greedy(tiny_llama):
    import torch

    from mechtox.data import encode

    ids = encode(tiny_llama, ["you are a stupid idiot"])[0]
    g = generate(tiny_llama, [ids], max_new_tokens=5, stop_at_eos=False, progress=False)
    seq = list(ids)
    for _ in range(5):
        seq.append(int(tiny_llama(torch.tensor([seq]))[0, -1].argmax()))
    assert g.continuation_ids[0] == seq[len(ids):]


def test_prompt_truncation_keeps_the_end(tiny):
    g = generate(tiny, ["the river and the city is good"], max_new_tokens=1, max_prompt_tokens=3, progress=False)
    assert len(g.prompt_ids[0]) == 3
    assert tiny.tokenizer.decode(g.prompt_ids[0]) == "city is good"


def test_bad_inputs(tiny):
    with pytest.raises(MechtoxError, match="no prompts"):
        generate(tiny, [], progress=False)
    with pytest.raises(MechtoxError, match="empty prompt"):
        generate(tiny, [""], progress=False)


def test_continuations_end_before_eos(tiny):
    eos = tiny.tokenizer.eos_token_id
    calls = {"n": 0}

    def force_eos_third(act, hook):  # the third forward call (third new token) predicts EOS
        calls["n"] += 1
        if calls["n"] == 3:
            act[:, -1] = 50.0 * tiny.W_U[:, eos].detach() / tiny.W_U[:, eos].norm()
        return act

    hooks = [("ln_final.hook_normalized", force_eos_third)]
    cut = generate(tiny, ["the city is"], 5, fwd_hooks=hooks, progress=False)
    calls["n"] = 0
    full = generate(tiny, ["the city is"], 5, fwd_hooks=hooks, stop_at_eos=False, progress=False)
    assert full.continuation_ids[0][2] == eos and len(full.continuation_ids[0]) == 5
    assert cut.continuation_ids[0] == full.continuation_ids[0][:2]
