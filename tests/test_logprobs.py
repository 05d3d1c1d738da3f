"""Log probabilities of sampled tokens (`logprobs=`): the log-softmax of the model's logits at
each step, checked against the host's forward pass run independently, token by token."""

import numpy as np
import pytest

import realm
from realm.forward import HostModel


def _reference(rt, model, prompt_ids, completion_ids, k):
    """(logprob of each completion token, its top k) from float64 log-softmax of HostModel logits."""
    hm = HostModel(rt.store, model.id, threads=1)
    kv = hm.new_kv_cache(len(prompt_ids) + len(completion_ids) + 1)
    logits = hm.forward(np.array(prompt_ids), kv, last_only=True)[0]
    out = []
    for t in completion_ids:
        x = logits.astype(np.float64)
        lp = x - (x.max() + np.log(np.exp(x - x.max()).sum()))
        order = sorted(range(len(x)), key=lambda i: (-x[i], i))[:k]
        out.append((lp[t], [(i, lp[i]) for i in order]))
        logits = hm.forward(np.array([t]), kv, last_only=True)[0]
    hm.close()
    return out


@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 1.1, "seed": 7}])
def test_logprobs_are_the_log_softmax_of_the_logits(rt, smollm2_path, sampling):
    model = rt.model(smollm2_path)
    c = rt.complete("The capital of France is", model, max_tokens=6, ignore_eos=True, logprobs=3, **sampling)
    assert c.logprobs is not None and [e.token for e in c.logprobs] == c.tokens
    for entry, (lp, top) in zip(c.logprobs, _reference(rt, model, c.prompt_tokens, c.tokens, 3)):
        assert entry.logprob == pytest.approx(lp, abs=1e-9)
        assert [i for i, _ in entry.top] == [i for i, _ in top]
        assert [v for _, v in entry.top] == pytest.approx([v for _, v in top], abs=1e-9)
    if sampling["temperature"] == 0:  # greedy: each token is the most likely
        assert all(e.top[0][0] == e.token for e in c.logprobs)


def test_streamed_logprobs_and_no_logprobs(rt, smollm2_path):
    model = rt.model(smollm2_path)
    stream = rt.generate("1, 2, 3,", model, max_tokens=5, temperature=0, ignore_eos=True, logprobs=0, stream=True)
    text = stream.text
    assert text and stream.completion.logprobs == stream.logprobs
    assert [e.token for e in stream.logprobs] == stream.completion.tokens and all(not e.top for e in stream.logprobs)
    assert rt.complete("1, 2, 3,", model, max_tokens=2).logprobs is None
    for bad in (-1, 21, 1.5, True):
        with pytest.raises((realm.InvalidArgumentError, realm.ArgumentTypeError)):
            rt.complete("x", model, max_tokens=1, logprobs=bad)
