"""The guest's sampler (guest/sampler.c) against an independent NumPy model of llama.cpp's chain.

The reference below re-implements llama.cpp's samplers (llama-sampler.cpp:
penalties, top-k, top-p, min-p, temperature, dist) in NumPy from their
documented semantics, and the guest's documented random source (splitmix64 ->
xoshiro256**) in plain Python, so candidate sets, probabilities and the sampled
tokens themselves are checked, not just their plausibility.
"""

from __future__ import annotations

import ctypes as C
import math
from collections import deque
from pathlib import Path
import numpy as np
import pytest

import guest_native as gn

F32 = np.float32
MASK64 = (1 << 64) - 1


# ---- reference ----------------------------------------------------------------------------


class Xoshiro:
    """splitmix64-seeded xoshiro256** (Blackman & Vigna), as documented in sampler.h."""

    def __init__(self, seed: int):
        x = seed
        self.s = []
        for _ in range(4):
            x = (x + 0x9E3779B97F4A7C15) & MASK64
            z = x
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
            self.s.append(z ^ (z >> 31))

    @staticmethod
    def _rotl(x: int, k: int) -> int:
        return ((x << k) | (x >> (64 - k))) & MASK64

    def next(self) -> int:
        s = self.s
        result = (self._rotl((s[1] * 5) & MASK64, 7) * 9) & MASK64
        t = (s[1] << 17) & MASK64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = self._rotl(s[3], 45)
        return result

    def uniform(self) -> float:
        return (self.next() >> 11) * 2.0 ** -53


def reference_chain(logits, recent, *, temperature, top_k, top_p, min_p, repeat_penalty=1.0,
                    frequency_penalty=0.0, presence_penalty=0.0):
    """(ids in draw order, their float32 exp(logit - max) weights, whether the top-p cut is
    within float rounding of p) or (greedy id, None, False)."""
    x = np.array(logits, dtype=F32)
    n = len(x)
    if recent and (repeat_penalty != 1.0 or frequency_penalty != 0.0 or presence_penalty != 0.0):
        ids, counts = np.unique(np.asarray(recent), return_counts=True)
        for i, c in zip(ids.tolist(), counts.tolist()):
            if 0 <= i < n:
                v = x[i] * F32(repeat_penalty) if x[i] <= 0 else x[i] / F32(repeat_penalty)
                x[i] = v - (F32(c) * F32(frequency_penalty) + F32(presence_penalty))
    if temperature <= 0:
        return int(np.argmax(x)), None, False

    def by_logit(order):  # highest first, lower id on ties
        return order[np.lexsort((order, -x[order]))]

    order, is_sorted, close_call = np.arange(n), False, False
    if top_k > 0:
        order, is_sorted = by_logit(order)[:min(top_k, n)], True
    if top_p < 1.0:
        cand = x[order]
        e = np.exp(cand - (cand[0] if is_sorted else cand.max()), dtype=F32)
        total = np.cumsum(e, dtype=F32)[-1]  # a float sum in the candidates' order
        srt = by_logit(order)
        p = np.exp(x[srt] - (cand[0] if is_sorted else cand.max()), dtype=F32) / total
        cum = np.cumsum(p, dtype=F32)
        reached = np.nonzero(cum >= F32(top_p))[0]
        keep = int(reached[0]) + 1 if reached.size else len(srt)
        # expf and NumPy's float32 exp may differ in the last bit: a cut that close can move by one
        close_call = any(abs(float(cum[i]) - top_p) < 2e-6 for i in (keep - 2, keep - 1) if 0 <= i < len(cum))
        order, is_sorted = srt[:keep], True
    if min_p > 0.0:
        threshold = F32(x[order].max() + F32(math.log(min_p)))
        kept = order[x[order] >= threshold]
        if kept.size:
            order = kept
    tempered = x[order] / F32(temperature)
    weights = np.exp(tempered - tempered.max(), dtype=F32)
    return order, weights, close_call


def assert_candidates(native_result, reference):
    ids, probs = native_result
    order, weights, close_call = reference
    if close_call and len(ids) != len(order):
        assert abs(len(ids) - len(order)) == 1
        m = min(len(ids), len(order))
        assert ids[:m].tolist() == order[:m].tolist()
        return
    assert ids.tolist() == order.tolist()
    np.testing.assert_allclose(probs, weights / weights.sum(dtype=np.float64), rtol=2e-5, atol=1e-9)


def reference_pick(order, weights, rng: Xoshiro) -> int:
    if len(order) == 1:
        return int(order[0])
    total = sum(float(w) for w in weights)  # a double sum of the float weights, in order
    target, run = total * rng.uniform(), 0.0
    for i, w in zip(order.tolist(), weights.tolist()):
        run += w
        if run >= target:
            return i
    return int(order[-1])


def logits_for(seed: int, n: int, scale: float = 3.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * scale).astype(F32)


PARAMS = [
    dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05),   # llama.cpp's defaults
    dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0),      # the full distribution
    dict(temperature=0.7, top_k=5, top_p=1.0, min_p=0.0),
    dict(temperature=1.3, top_k=0, top_p=0.9, min_p=0.0),
    dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.1),
    dict(temperature=0.5, top_k=100, top_p=0.5, min_p=0.02),
    dict(temperature=2.0, top_k=1000000, top_p=0.99, min_p=0.0),
]


# ---- tests ----------------------------------------------------------------------------------


def test_greedy_is_first_argmax(native):
    s = gn.Sampler(native, temperature=0.0)
    assert s.error == 0
    for seed in range(20):
        x = logits_for(seed, 1000)
        assert s.sample(x) == int(np.argmax(x))
    tied = np.zeros(50, dtype=F32)
    tied[[7, 13, 42]] = 5.0
    assert s.sample(tied) == 7
    assert s.sample(np.full(10, -1.0, dtype=F32)) == 0
    ids, probs = s.candidates(tied)
    assert ids.tolist() == [7] and probs.tolist() == [1.0]


@pytest.mark.parametrize("params", PARAMS, ids=lambda p: "-".join(f"{k}{v}" for k, v in p.items()))
@pytest.mark.parametrize("n", [50, 32000])
def test_candidates_match_reference(native, params, n):
    s = gn.Sampler(native, **params)
    assert s.error == 0
    for seed in range(5):
        x = logits_for(seed + 100 * n, n)
        assert_candidates(s.candidates(x), reference_chain(x, [], **params))


def test_top_k_on_gemma_sized_vocabulary(native):
    n = 262144
    x = logits_for(7, n)
    for params in (dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05),
                   dict(temperature=1.0, top_k=0, top_p=0.9, min_p=0.0)):
        assert_candidates(gn.Sampler(native, **params).candidates(x), reference_chain(x, [], **params))


@pytest.mark.parametrize("penalties", [
    dict(repeat_penalty=1.3), dict(frequency_penalty=0.5), dict(presence_penalty=0.7),
    dict(repeat_penalty=0.8, frequency_penalty=0.2, presence_penalty=-0.3),
])
def test_penalties_match_reference(native, penalties):
    """llama.cpp's penalties: over the last penalty_last_n accepted tokens, logits <= 0 are
    multiplied and > 0 divided by repeat_penalty, then count * frequency + presence subtracted."""
    n, last_n = 64, 6
    params = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, penalty_last_n=last_n, **penalties)
    s = gn.Sampler(native, **params)
    recent = deque(maxlen=last_n)
    history = [3, 5, 3, 60, 3, 5, 9, 9, 1, 3, 63, 5]
    for step, token in enumerate(history):
        x = logits_for(step, n)
        x[:8] = np.array([-2, -0.5, 0, 0.5, 2, -1, 1, 3], dtype=F32)  # both signs penalized
        reference = reference_chain(x, list(recent), **{k: v for k, v in params.items() if k != "penalty_last_n"})
        assert_candidates(s.candidates(x), reference)
        s.accept(token)
        recent.append(token)
    # greedy sees the penalized logits too
    g = gn.Sampler(native, temperature=0.0, repeat_penalty=100.0, penalty_last_n=4)
    x = np.array([5.0, 4.0, 1.0], dtype=F32)
    assert g.sample(x) == 0
    g.accept(0)
    assert g.sample(x) == 1


@pytest.mark.parametrize("params", PARAMS[:5], ids=lambda p: "-".join(f"{k}{v}" for k, v in p.items()))
def test_sampled_tokens_match_reference(native, params):
    """The documented random source and draw reproduce the guest's tokens exactly."""
    seed = 1234567
    s = gn.Sampler(native, seed=seed, **params)
    rng = Xoshiro(seed)
    for step in range(40):
        x = logits_for(step, 500, scale=2.0)
        order, weights, close_call = reference_chain(x, [], **params)
        assert not close_call
        assert s.sample(x) == reference_pick(order, weights, rng)
    assert s.uniform() == rng.uniform()  # both streams advanced in step


def test_same_seed_same_sequence(native):
    x = [logits_for(step, 2000, scale=1.0) for step in range(60)]

    def run(seed):
        s = gn.Sampler(native, seed=seed, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0,
                       repeat_penalty=1.1, penalty_last_n=16)
        out = []
        for logits in x:
            out.append(s.sample(logits))
            s.accept(out[-1])
        return out

    assert run(42) == run(42)
    assert run(42) != run(43)


def test_sampled_distribution(native):
    """Chi-square goodness of fit of 20,000 draws to softmax(logits / T) (fixed seed: not flaky)."""
    logits = np.array([1.0, 0.5, 0.0, -0.5, 2.0, -1.0, 0.25, 1.5], dtype=F32)
    temperature = 1.2
    s = gn.Sampler(native, seed=2024, temperature=temperature, top_k=0, top_p=1.0, min_p=0.0)
    draws = 20000
    counts = np.bincount([s.sample(logits) for _ in range(draws)], minlength=len(logits))
    p = np.exp(logits / temperature - (logits / temperature).max())
    expected = draws * p / p.sum()
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 24.32  # 7 degrees of freedom, p = 0.001


def test_bad_parameters_are_refused(native):
    for bad in (dict(temperature=float("nan")), dict(top_p=float("nan")), dict(min_p=float("nan")),
                dict(repeat_penalty=0.0), dict(repeat_penalty=float("inf")),
                dict(frequency_penalty=float("nan")), dict(penalty_last_n=-1),
                dict(penalty_last_n=65537)):
        assert gn.Sampler(native, **bad).error == -1, bad
    s = gn.Sampler(native)
    assert s.lib.sampler_sample(s.handle, None, 10) == -1
    empty = np.zeros(1, dtype=F32)
    assert s.lib.sampler_sample(s.handle, empty.ctypes.data_as(C.POINTER(C.c_float)), 0) == -1
    # out-of-range ids among the accepted tokens are ignored by the penalties
    p = gn.Sampler(native, temperature=0.0, repeat_penalty=2.0, penalty_last_n=4)
    for token in (-5, 10**6, 2):
        p.accept(token)
    assert p.sample(np.array([1.0, 1.5, 2.5], dtype=F32)) == 1


def test_non_finite_logits_do_not_crash(native):
    x = np.array([0.0, np.inf, -np.inf, np.nan, 1.0], dtype=F32)
    for params in PARAMS:
        token = gn.Sampler(native, **params).sample(x)
        assert 0 <= token < len(x)


def softmax_weights(native, x: np.ndarray, div: float = 1.0, sub: float = 0.0,
                    threshold: float = float("-inf")) -> tuple[np.ndarray, int]:
    """guest/softmax.c's scalar reference: e^(x / div - sub) where x >= threshold, else 0; and
    its count of those x.  Its sums are the weights' sums in order, in double and in float."""
    f = native.lib.softmax_weights_ref
    f.restype = C.c_uint32
    f.argtypes = [C.c_void_p, C.c_void_p, C.c_uint32, C.c_float, C.c_float, C.c_float, C.POINTER(C.c_double),
                  C.POINTER(C.c_float)]
    x = np.ascontiguousarray(x, dtype=F32)
    w = np.empty_like(x)
    total, ftotal = C.c_double(0.0), C.c_float(0.0)
    count = f(w.ctypes.data, x.ctypes.data, len(x), div, sub, threshold, C.byref(total), C.byref(ftotal))
    in_order, f_in_order = 0.0, F32(0.0)
    for v in w:
        in_order += float(v)
        f_in_order = F32(f_in_order + v)
    assert total.value == in_order and F32(ftotal.value) == f_in_order
    return w, count


def test_softmax_exp_is_within_an_ulp(native):
    """The softmax's e^x (guest/softmax.c, in place of libm's expf) against float64's exp at
    every 997th float of [ln FLT_MIN, 0], the domain the sampler uses: within 1 ulp."""
    top = int(F32(-87.33654475).view(np.uint32))
    x = np.arange(0x80000000, top + 1, 997, dtype=np.uint64).astype(np.uint32).view(F32)
    w, _ = softmax_weights(native, x)
    exact = np.exp(x.astype(np.float64))
    ulps = np.abs(w - exact) / np.spacing(exact.astype(F32))
    assert ulps.max() < 1.0
    assert np.mean(w == exact.astype(F32)) > 0.98  # correctly rounded, mostly


def test_softmax_exp_edges(native):
    x = np.array([0.0, -0.0, 1.0, 100.0, np.inf, -87.3365, -87.34, -100.0, -np.inf, np.nan], dtype=F32)
    w, count = softmax_weights(native, x)
    assert w[:4].tolist() == [1.0, 1.0, 1.0, 1.0]  # a positive x counts as 0 (callers subtract the max)
    assert w[4] == 1.0
    assert 0 < w[5] and w[6:9].tolist() == [0.0, 0.0, 0.0]  # below FLT_MIN: 0
    assert w[9] == 0.0 and count == 9  # NaN is below every threshold: weight 0, not counted
    w, count = softmax_weights(native, np.array([-1.0, 0.5, 2.0, -3.0], dtype=F32), div=2.0, sub=1.0, threshold=0.0)
    assert count == 2 and w[0] == 0.0 and w[3] == 0.0
    np.testing.assert_allclose(w[1:3], np.exp([0.25 - 1.0, 1.0 - 1.0]), rtol=1.2e-7)


# ---- llama.cpp's own samplers -------------------------------------------------------------


def llama_cpp_candidates(logits: np.ndarray, recent: list[int], params: dict) -> dict[int, float]:
    """id -> probability after llama.cpp's chain (penalties, top-k, top-p, min-p, temperature)."""
    from conftest import require

    lc = require("llama_cpp")
    chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
    try:
        if params.get("penalty_last_n", 0):
            # declared here with llama.h's current signature (the binding still lists an n_vocab)
            init = C.CDLL(str(Path(lc.__file__).parent / "lib" / "libllama.so")).llama_sampler_init_penalties
            init.argtypes, init.restype = [C.c_int32, C.c_float, C.c_float, C.c_float], lc.llama_sampler_p_ctypes
            lc.llama_sampler_chain_add(chain, init(params["penalty_last_n"], params.get("repeat_penalty", 1.0),
                                                   params.get("frequency_penalty", 0.0),
                                                   params.get("presence_penalty", 0.0)))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_k(params["top_k"]))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_p(params["top_p"], 1))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_min_p(params["min_p"], 1))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(params["temperature"]))
        for token in recent:
            lc.llama_sampler_accept(chain, token)
        data = (lc.llama_token_data * len(logits))()
        for i, x in enumerate(logits.tolist()):
            data[i].id, data[i].logit, data[i].p = i, x, 0.0
        cur = lc.llama_token_data_array(data=data, size=len(logits), selected=-1, sorted=False)
        lc.llama_sampler_apply(chain, C.byref(cur))
        ids = np.array([data[i].id for i in range(cur.size)])
        tempered = np.array([data[i].logit for i in range(cur.size)], dtype=np.float64)
    finally:
        lc.llama_sampler_free(chain)
    p = np.exp(tempered - tempered.max())
    return dict(zip(ids.tolist(), (p / p.sum()).tolist()))


@pytest.mark.parametrize("params", PARAMS + [
    dict(temperature=0.9, top_k=50, top_p=0.9, min_p=0.05, repeat_penalty=1.2, frequency_penalty=0.1,
         presence_penalty=0.2, penalty_last_n=8)], ids=lambda p: "-".join(f"{k}{v}" for k, v in p.items()))
def test_candidates_match_llama_cpp(native, params):
    """The same candidates and probabilities as llama.cpp's own sampler chain."""
    recent = [3, 17, 3, 250, 17, 3, 999, 42][:params.get("penalty_last_n", 0)]
    for seed in range(3):
        x = logits_for(seed + 77, 4000)
        s = gn.Sampler(native, **params)
        for token in recent:
            s.accept(token)
        ids, probs = s.candidates(x)
        theirs = llama_cpp_candidates(x, recent, params)
        assert sorted(ids.tolist()) == sorted(theirs)
        np.testing.assert_allclose(probs, [theirs[i] for i in ids.tolist()], rtol=1e-4, atol=1e-9)


def test_greedy_ties_like_llama_cpp(native):
    """llama.cpp's greedy sampler keeps the first of equal maxima; so does the guest's."""
    from conftest import require

    lc = require("llama_cpp")
    x = np.array([0.5, 3.0, -1.0, 3.0, 3.0, 2.0], dtype=F32)
    data = (lc.llama_token_data * len(x))()
    for i, v in enumerate(x.tolist()):
        data[i].id, data[i].logit, data[i].p = i, v, 0.0
    cur = lc.llama_token_data_array(data=data, size=len(x), selected=-1, sorted=False)
    greedy = lc.llama_sampler_init_greedy()
    lc.llama_sampler_apply(greedy, C.byref(cur))
    lc.llama_sampler_free(greedy)
    assert gn.Sampler(native, temperature=0.0).sample(x) == data[cur.selected].id == 1
