"""Toxicity directions beyond the GPT-2 probe recipe, and outlier (massive) dimensions.

Each method returns a :class:`~mechtox.probe.Direction` (unit vector at a hook, with its
provenance), usable wherever a probe is accepted (ranking, interventions, attribution):

* ``probe`` — :func:`mechtox.probe.fit_probe` (Lee et al. 2024);
* ``unembed`` — mean unembedding, through the final norm's weight, of toxic tokens minus that
  of non-toxic tokens; the token sets come from data (:func:`token_log_odds`: tokens whose
  document log-odds of appearing in toxic vs non-toxic texts are highest) or from the user
  (Yang et al. v3 used an unembedding-based direction on Llama/Gemma/Mistral);
* ``gen-diffmean`` — difference of means of the stream at the model's OWN generated positions,
  between continuations scored toxic and non-toxic;
* ``gradient`` — the average gradient, with respect to the stream, of a toxicity objective
  (log-probability that the next token is toxic, or a probe's score).

Neurons can also be ranked by *contrast* (:func:`activation_contrast`): ``(a_toxic - a_nontoxic)
* (v . w)``, how much more a neuron writes along ``w`` at the model's own generated positions of
toxic than of non-toxic continuations. It respects the sign of the activation (a gated MLP's
``hook_post`` is often negative), which a cosine ranking cannot see.

Without any direction, :func:`neuron_attribution` ranks neurons by attribution patching: how
much the log-probability of the model's own toxic words (at its generated positions) depends on
each neuron, to first order. :func:`copy_stats` says how much of that toxicity repeats words of
the prompt (copying, which MLP value vectors do not do).

Value-vector cosines can be taken in a metric not dominated by massive dimensions
(:func:`metric_scale`): vectors are divided and covectors multiplied by a per-dimension scale,
which keeps every dot product and changes only the norms.
"""

from __future__ import annotations

from mechtox.directions.generations import (  # noqa: F401 (the public names of the package)
    _WORD_START,
    _WORDS,
    ActivationContrast,
    CopyStats,
    _flagged_words,
    _generated_means,
    _generations,
    _word_set,
    activation_contrast,
    copy_stats,
    split_generations,
    toxic_word_mask,
    unflagged_prompts,
    word_spans,
)
from mechtox.directions.methods import (  # noqa: F401 (the public names of the package)
    generation_diffmean_direction,
    gradient_direction,
    unembedding_direction,
)
from mechtox.directions.metrics import (  # noqa: F401 (the public names of the package)
    Metric,
    metric_scale,
    outlier_dims,
    rescaled,
)
from mechtox.directions.patching import (  # noqa: F401 (the public names of the package)
    NeuronAttribution,
    _mlp_grads,
    benign_attribution,
    neuron_attribution,
    rerank_by_attribution,
    toxic_lens_neurons,
)
from mechtox.directions.tokens import (  # noqa: F401 (the public names of the package)
    _ALNUM,
    TokenSets,
    final_resid_hook,
    token_log_odds,
    token_sets,
    words_to_tokens,
)
from mechtox.specs import DIRECTION_METHODS  # noqa: F401 (defined there, light: the CLI checks --methods before torch)
