"""The guest's tokenizer exports and generation loop (guest/vocab.c, guest/generate.c) through
realm.Realm, against llama.cpp (llama-cpp-python) and against realm's own host-side forward
pass driven from Python.

Every expected token id comes from llama.cpp or from an independent driver: HostModel (the
host's forward pass without a guest) with the sampler compiled natively
(tests/guest_native.py), which must pick exactly the tokens the guest picks from the same
logits.  Greedy continuations equal llama.cpp's token for token: all 32 tokens when llama.cpp
evaluates the prompt a token at a time, as realm's numerics do (on the llama.cpp builds whose
kernels realm follows, forward_helpers.llama_cpp_exact); after llama.cpp's batched prompt (its
other kernels), up to the first step where llama.cpp itself has a near tie (see
tests/test_forward.py).
"""

from __future__ import annotations

import struct
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import require
from forward_helpers import llama_cpp_exact
import guest_native as gn
from realm import ClosedError, InvalidArgumentError, LimitExceeded, ModelNotFoundError, Realm, abi
from realm.abi import Err
from realm.forward import HostModel
from realm.guest import Guest, GuestError
from realm.runtime import ContextWindowError, GenerationError

NEAR_TIE = 0.5  # as tests/test_forward.py
DECISIVE = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"
GREEDY_PROMPTS = [DECISIVE, "Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday. January, February,",
                  "def add(a, b):\n    return", "The capital of France is"]
GREEDY_STEPS = 16
MiB = 1 << 20

CORPUS = [
    "",
    "Hello world",
    "The capital of France is",
    "   leading spaces and trailing   ",
    "runs   of    spaces\n\n\nand\n\nnewlines\r\n\t\ttabs",
    "café naïve façade résumé Ångström Zürich straße œuvre",
    "日本語のテキストと中文文本和한국어",
    "emoji 😀🎉👍🏽 flags 🇫🇷🇯🇵 zwj 👨‍👩‍👧",
    "12345678901234567890 3.14159 1,000,000 -42 1e-10 ٠١٢٣",
    "def f(x):\n    return x ** 2  # square\n\nint main(void) { printf(\"%d\\n\", a[i]); }",
    "It's they're we've I'm you'll he'd",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n",
    "<bos><eos> </s> <s> <|endoftext|>",
    "combining e\u0301 a\u0308, nbsp\u00a0x, zero\u200bwidth",
    " " * 33 + "x" + "\n" * 17,
]


# -- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def model(request, rt, smollm2_path, gemma3_path):
    return rt.model(smollm2_path if request.param == "smollm2" else gemma3_path)


class LlamaRef:
    """llama.cpp on the same file, keeping every position's logits."""

    def __init__(self, path, n_ctx: int = 128):
        llama_cpp = require("llama_cpp")
        self.llm = llama_cpp.Llama(str(path), logits_all=True, n_ctx=n_ctx, n_threads=2, n_threads_batch=2,
                                   verbose=False)
        self.vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self.llama_cpp = llama_cpp

    def is_eog(self, token: int) -> bool:
        return bool(self.llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def greedy(self, tokens: list[int], n: int, one_by_one: bool = False) -> tuple[list[int], list[np.ndarray]]:
        """Greedy tokens (stopping at an end-of-generation token, which is not returned) and the
        logits each was picked from; one_by_one evaluates the prompt a token at a time."""
        self.llm.reset()
        for part in ([[t] for t in tokens] if one_by_one else [tokens]):
            self.llm.eval(part)
        out, rows = [], []
        for _ in range(n):
            row = self.llm.scores[self.llm.n_tokens - 1].copy()
            rows.append(row)
            token = int(row.argmax())
            if self.is_eog(token):
                break
            out.append(token)
            self.llm.eval([token])
        return out, rows

    def close(self) -> None:
        self.llm.close()


@pytest.fixture(scope="module")
def llama(model):
    ref = LlamaRef(model.path)
    yield ref
    ref.close()


@pytest.fixture(scope="module")
def llama_vocab(model):
    llama_cpp = require("llama_cpp")
    llm = llama_cpp.Llama(str(model.path), vocab_only=True, verbose=False)
    yield llm
    llm.close()


@pytest.fixture(scope="module")
def llama_vocab_smollm2(smollm2_path):
    llm = require("llama_cpp").Llama(str(smollm2_path), vocab_only=True, verbose=False)
    yield llm
    llm.close()


# -- tokenize / detokenize ------------------------------------------------------------------------

@pytest.mark.parametrize("add_special,parse_special", [(False, False), (True, False), (False, True), (True, True)])
def test_tokenize_equals_llama_cpp(rt, model, llama_vocab, add_special, parse_special):
    for text in CORPUS:
        want = llama_vocab.tokenize(text.encode(), add_bos=add_special, special=parse_special)
        got = rt.tokenize(text, model, add_special=add_special, parse_special=parse_special)
        assert got == want, text


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(st.characters(codec="utf-8"), max_size=40), parse_special=st.booleans())
def test_tokenize_any_text_equals_llama_cpp(rt, model, llama_vocab, text, parse_special):
    want = llama_vocab.tokenize(text.encode(), add_bos=True, special=parse_special)
    assert rt.tokenize(text, model, parse_special=parse_special) == want


def test_detokenize_round_trips_where_llama_cpp_does(rt, model, llama_vocab):
    checked = 0
    for text in CORPUS:
        ids = rt.tokenize(text, model, add_special=False)
        ref = llama_vocab.detokenize(ids).decode("utf-8", "replace")
        assert rt.detokenize(ids, model) == ref
        if ref == text:
            assert rt.detokenize(ids, model) == text
            checked += 1
    assert checked >= len(CORPUS) // 2


def test_detokenize_special_and_pieces(rt, model, llama_vocab):
    ids = rt.tokenize("<|im_start|>Hi<|im_end|><start_of_turn>yo<end_of_turn>", model, parse_special=True)
    for special in (False, True):
        want = llama_vocab.detokenize(ids, special=special).decode("utf-8", "replace")
        assert rt.detokenize(ids, model, special=special) == want
    # a character cut between tokens: pieces alone are not UTF-8, together they are
    ids = rt.tokenize("😀", model, add_special=False)
    assert rt.detokenize(ids, model) == "😀"
    with pytest.raises(GuestError) as err:
        rt.detokenize([model.n_vocab], model)
    assert err.value.code == Err.BAD_ARGUMENT


# -- greedy generation -----------------------------------------------------------------------------

@pytest.mark.parametrize("prompt", GREEDY_PROMPTS, ids=["counting", "calendar", "code", "capital"])
def test_greedy_equals_llama_cpp(rt, model, llama, prompt):
    c = rt.complete(prompt, model, max_tokens=GREEDY_STEPS, temperature=0)
    tokens = llama.llm.tokenize(prompt.encode(), add_bos=True, special=True)
    assert c.prompt_tokens == tokens
    want, rows = llama.greedy(tokens, GREEDY_STEPS)
    for step, (g, w) in enumerate(zip(c.tokens, want)):
        if g != w:  # the paths may part only where llama.cpp itself has a near tie
            row = rows[step]
            assert np.partition(row, -2)[-2] > row.max() - NEAR_TIE, f"step {step}: {g} != llama.cpp's {w}"
            assert prompt in GREEDY_PROMPTS[3:], "this prompt has no near tie: it must continue exactly as llama.cpp"
            return
    assert c.tokens == want
    assert c.stop_reason == ("eog" if len(want) < GREEDY_STEPS else "length")
    # the text is the tokens' bytes, decoded
    assert c.text == llama.llm.detokenize(want).decode("utf-8", "replace")


@pytest.mark.parametrize("prompt", GREEDY_PROMPTS, ids=["counting", "calendar", "code", "capital"])
def test_greedy_equals_llama_cpp_one_token_at_a_time(rt, model, llama, prompt):
    """32 tokens through the guest, each equal to llama.cpp's when it evaluates the prompt a
    token at a time (on other builds: up to its first near tie)."""
    c = rt.complete(prompt, model, max_tokens=32, temperature=0)
    want, rows = llama.greedy(c.prompt_tokens, 32, one_by_one=True)
    if llama_cpp_exact():
        assert c.tokens == want
        assert c.stop_reason == ("eog" if len(want) < 32 else "length")
        return
    for step, (g, w) in enumerate(zip(c.tokens, want)):
        if g != w:
            row = rows[step]
            assert np.partition(row, -2)[-2] > row.max() - NEAR_TIE, f"step {step}: {g} != llama.cpp's {w}"
            return


def test_greedy_equals_host_forward_pass(rt, model):
    """The guest's loop (prefill in one batch, then a token at a time, logits of the last row)
    picks exactly the tokens an argmax over HostModel.forward's logits picks."""
    prompt = "Water boils at 100 degrees Celsius at sea level. At higher altitudes, the boiling point"
    c = rt.complete(prompt, model, max_tokens=16, temperature=0, ignore_eos=True)
    with HostModel(rt.store, model.id, threads=2) as host:
        kv = host.new_kv_cache(64)
        logits = host.forward(c.prompt_tokens, kv, last_only=True)
        want = []
        for _ in range(16):
            want.append(int(logits[0].argmax()))
            logits = host.forward([want[-1]], kv, last_only=True)
    assert c.tokens == want
    assert c.usage.completion_tokens == 16 and c.usage.decoded_tokens == 15 and c.stop_reason == "length"


def test_prefill_batches_give_the_same_tokens(rt, smollm2_path):
    """A prompt split over several prefill batches continues as in one batch."""
    prompt = "One two three four five six seven eight nine ten eleven twelve thirteen"
    g = Guest(rt.store, threads=2)
    try:
        g.attach(rt.model(smollm2_path).id)
        runs = [_guest_generate(g, prompt, n_batch=n, max_tokens=8)[0] for n in (0, 1, 5)]
    finally:
        g.close()
    assert runs[0] == runs[1] == runs[2] and len(runs[0]) == 8


# -- sampling --------------------------------------------------------------------------------------

def test_sampled_tokens_equal_native_sampler_on_host_logits(rt, smollm2_path, native):
    """Seeded sampling with every stage of the chain (penalties over the prompt too): the guest's
    tokens equal the C sampler's, run natively on HostModel's logits with the same seed."""
    model = rt.model(smollm2_path)
    opts = dict(temperature=0.9, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.3, repeat_last_n=16,
                frequency_penalty=0.1, presence_penalty=0.2, seed=1234)
    prompt = "Once upon a time, in a small village,"
    c = rt.complete(prompt, model, max_tokens=20, ignore_eos=True, **opts)
    s = gn.Sampler(native, temperature=0.9, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.3,
                   frequency_penalty=0.1, presence_penalty=0.2, penalty_last_n=16, seed=1234)
    for t in c.prompt_tokens:
        s.accept(t)
    with HostModel(rt.store, model.id, threads=2) as host:
        kv = host.new_kv_cache(64)
        logits = host.forward(c.prompt_tokens, kv, last_only=True)
        want = []
        for _ in range(20):
            want.append(s.sample(logits[0]))
            s.accept(want[-1])
            logits = host.forward([want[-1]], kv, last_only=True)
    assert c.tokens == want


def test_same_seed_same_text(rt, model):
    opts = dict(max_tokens=16, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, ignore_eos=True)
    a = rt.complete("My favourite colour is", model, seed=7, **opts)
    b = rt.complete("My favourite colour is", model, seed=7, **opts)
    assert a.tokens == b.tokens and a.text == b.text and a.seed == 7
    others = {tuple(rt.complete("My favourite colour is", model, seed=s, **opts).tokens) for s in (8, 9, 10)}
    assert others != {tuple(a.tokens)}, "the seed changes nothing"


def test_top_k_1_and_min_p_1_are_greedy(rt, smollm2_path):
    model = rt.model(smollm2_path)
    greedy = rt.complete("The capital of France is", model, max_tokens=10, temperature=0, ignore_eos=True).tokens
    for opts in (dict(top_k=1), dict(top_k=0, top_p=1.0, min_p=1.0)):
        c = rt.complete("The capital of France is", model, max_tokens=10, temperature=1.5, seed=3,
                        ignore_eos=True, **opts)
        assert c.tokens == greedy, opts


# -- stops -------------------------------------------------------------------------------------------

def stopped_text(texts: list[str], stops: list[str]) -> str | None:
    """A stop check after each token, as a streaming generator must make it (llama.cpp's server
    does the same): `texts` is the text after each token; the first one holding a stop string is
    cut before the earliest stop string in it.  None: no stop."""
    for text in texts:
        found = [text.index(s) for s in stops if s in text]
        if found:
            return text[:min(found)]
    return None


def test_stop_strings_end_the_text_before_them(rt, model, llama_vocab):
    prompt = "Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday. January, February,"
    full = rt.complete(prompt, model, max_tokens=24, temperature=0, ignore_eos=True)
    text = full.text
    assert len(text) > 12
    texts = [llama_vocab.detokenize(full.tokens[:k]).decode("utf-8", "replace") for k in range(1, 25)]
    # a stop string from the middle of the text (it may span tokens), several at once, none found
    cut = len(text) // 2
    middle = text[cut:cut + 4].strip() or text[cut:cut + 5]
    for stops in ([middle], ["\u2603 never", middle, text[-3:]], [text[:2]]):
        c = rt.complete(prompt, model, max_tokens=24, temperature=0, ignore_eos=True, stop=stops)
        assert c.text == stopped_text(texts, stops) and c.stop_reason == "stop", stops
        assert c.tokens == full.tokens[:len(c.tokens)]
    assert c.text == ""  # the text's beginning stops it at once
    c = rt.complete(prompt, model, max_tokens=24, temperature=0, ignore_eos=True, stop="\u2603 nowhere")
    assert c.text == text and c.stop_reason == "length"


@pytest.fixture(scope="module")
def tiny(rt, tmp_path_factory):
    """The 2-layer tiny llama of gguf_helpers (64 tokens "t0".."t63"): fast to generate from."""
    require("gguf")
    from gguf_helpers import write_tiny_llama

    path = write_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny.gguf", seed=3)
    model = rt.load_model(path)
    full = rt.complete("", model, max_tokens=48, temperature=0, ignore_eos=True)
    return model, full


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_stop_strings_on_any_substring(rt, tiny, data):
    """Stop strings cut from the text (overlapping, repeated, spanning tokens) end it where a
    per-token stop check on the tokens' own text says, keeping the tokens up to there."""
    model, full = tiny
    text = full.text
    assert text == "".join(f"t{i}" for i in full.tokens)  # token i is the text "t<i>"
    stops = []
    for _ in range(data.draw(st.integers(1, 3))):
        start = data.draw(st.integers(0, len(text) - 1))
        stops.append(text[start:start + data.draw(st.integers(1, 6))])
    c = rt.complete("", model, max_tokens=48, temperature=0, ignore_eos=True, stop=stops)
    texts = ["".join(f"t{i}" for i in full.tokens[:k]) for k in range(1, len(full.tokens) + 1)]
    assert c.text == stopped_text(texts, stops) and c.stop_reason == "stop"
    assert c.tokens == full.tokens[:len(c.tokens)]


def test_max_tokens_and_streaming(rt, model):
    c = rt.complete("Once upon a time", model, max_tokens=9, seed=5, ignore_eos=True)
    assert len(c.tokens) == 9 and c.usage.completion_tokens == 9 and c.stop_reason == "length"
    stream = rt.generate("Once upon a time", model, max_tokens=9, seed=5, ignore_eos=True, stream=True)
    pieces = list(stream)
    assert all(isinstance(p, str) and p for p in pieces)
    assert "".join(pieces) == c.text == stream.completion.text
    assert stream.completion.tokens == c.tokens
    assert rt.last_usage == stream.completion.usage


@pytest.mark.parametrize("prompt", ["日本の首都は", "🦩🦩🦩🦩🦩🦩🦩🦩", "Ω≈ç√∫˜µ≤≥÷ Ω≈ç√∫˜µ≤≥÷ Ω≈ç√"])
def test_streamed_text_is_whole_characters(rt, model, llama_vocab, prompt):
    """Characters split over several tokens (byte tokens, CJK) stream out whole; the text is the
    tokens' bytes as llama.cpp detokenizes them, a character cut off at the end as U+FFFD."""
    stream = rt.generate(prompt, model, max_tokens=12, temperature=0, ignore_eos=True, stream=True)
    pieces = list(stream)
    c = stream.completion
    raw = llama_vocab.detokenize(c.tokens)
    assert "".join(pieces) == c.text == raw.decode("utf-8", "replace")
    if "🦩" in c.text:  # four byte tokens a flamingo: held back until whole
        assert len(pieces) < len(c.tokens)


def test_generation_ends_at_end_of_generation_token(rt, smollm2_path, llama_vocab_smollm2):
    model = rt.model(smollm2_path)
    prompt = rt.render_chat([{"role": "user", "content": "Say hello."}], model)
    c = rt.complete(prompt, model, max_tokens=64, temperature=0)
    assert c.stop_reason == "eog" and len(c.tokens) < 64
    # going on past it shows the token the guest stopped at: an end-of-generation token to llama.cpp
    eog = rt.complete(prompt, model, max_tokens=len(c.tokens) + 1, temperature=0, ignore_eos=True).tokens[-1]
    llama_cpp = require("llama_cpp")
    assert llama_cpp.llama_vocab_is_eog(llama_cpp.llama_model_get_vocab(llama_vocab_smollm2.model), eog)


def test_cancelled_stream(rt, smollm2_path):
    stream = rt.generate("Once upon a time", smollm2_path, max_tokens=200, seed=1, ignore_eos=True, stream=True)
    next(stream)
    stream.close()
    assert stream.completion is not None and stream.completion.stop_reason == "cancelled"
    assert len(stream.completion.tokens) < 200


def test_a_tenants_generations_share_its_kv_bytes(smollm2_path):
    """tenant_kv_bytes is one counter for all of a tenant's running generations: while a long one
    holds its KV cache, a second that would pass the sum is refused (LimitExceeded), another
    tenant's is not, and once the first ends the tenant may run it."""
    options = dict(max_tokens=40, temperature=0, ignore_eos=True)
    long = dict(max_tokens=1000, temperature=0, ignore_eos=True, stream=True)
    with Realm(threads=1) as probe:
        stream = probe.generate("Once upon a time", probe.load_model(smollm2_path), tenant="a", **long)
        next(stream)
        held = probe.in_flight()["a"]
        stream.close()
    assert held > 0
    with Realm(threads=1, tenant_kv_bytes=held + 1) as r:
        model = r.load_model(smollm2_path)
        stream = r.generate("Once upon a time", model, tenant="a", **long)
        next(stream)
        with pytest.raises(LimitExceeded, match="tenant's share"):
            r.complete("Once upon a time", model, tenant="a", **options)
        other = r.complete("Once upon a time", model, tenant="b", **options)
        assert r.in_flight() == {"a": held}
        stream.close()
        assert r.complete("Once upon a time", model, tenant="a", **options).tokens == other.tokens
        assert r._tenants == {}  # a tenant's counter goes with its last generation
    with pytest.raises(InvalidArgumentError):
        Realm(tenant_kv_bytes=-1)


# -- context -----------------------------------------------------------------------------------------

def test_context_overflow_is_a_clear_error(rt, smollm2_path):
    model = rt.model(smollm2_path)
    with pytest.raises(ContextWindowError, match=r"5 tokens \+ max_tokens 20 do not fit the context of 16"):
        rt.generate("The capital of France is", model, max_tokens=20, n_ctx=16)
    with pytest.raises(ContextWindowError, match="training context"):
        rt.generate("x", model, n_ctx=model.n_ctx_train + 1)
    c = rt.complete("The capital of France is", model, max_tokens=11, n_ctx=16, temperature=0, ignore_eos=True)
    assert len(c.tokens) == 11 and c.stop_reason == "length"
    c = rt.complete("The capital of France is", model, max_tokens=None, n_ctx=12, temperature=0, ignore_eos=True)
    assert len(c.prompt_tokens) + len(c.tokens) == 12 and c.stop_reason == "length"


def test_two_threads_generate_at_once_on_one_model(rt, model):
    prompts = ["The capital of France is", "1, 2, 3, 4,"]
    want = [rt.complete(p, model, max_tokens=12, temperature=0, ignore_eos=True).tokens for p in prompts]
    got: dict[int, list[int]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def work(i: int) -> None:
        try:
            barrier.wait()
            got[i] = rt.complete(prompts[i], model, max_tokens=12, temperature=0, ignore_eos=True).tokens
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [got[0], got[1]] == want


# -- guest memory ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name,limit", [("smollm2", 16 * MiB), ("gemma3", 32 * MiB)])
def test_guest_memory_after_a_generation(rt, smollm2_path, gemma3_path, name, limit):
    """A ~150-token prompt, then sampling with top-p over the whole vocabulary (the sampler's
    largest candidate arrays), streaming text through a stop string: the guest stays small."""
    model = rt.model(smollm2_path if name == "smollm2" else gemma3_path)
    prompt = " ".join(["The quick brown fox jumps over the lazy dog."] * 15)
    c = rt.complete(prompt, model, max_tokens=6, temperature=1.0, top_k=0, top_p=0.99, min_p=0.0, seed=1,
                    stop=["\u2603"], ignore_eos=True)
    assert len(c.prompt_tokens) >= 120 and len(c.tokens) == 6
    assert c.usage.guest_memory <= limit, f"{c.usage.guest_memory / MiB:.1f} MiB"


# -- the guest's exports, driven directly --------------------------------------------------------------

def _params(**kw) -> bytes:
    p = dict(seed=0, n_ctx=0, max_tokens=8, temperature=0.0, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.0,
             frequency_penalty=0.0, presence_penalty=0.0, penalty_last_n=64,
             flags=abi.TOKENIZE_ADD_SPECIAL | abi.TOKENIZE_PARSE_SPECIAL | abi.GENERATE_IGNORE_EOG, n_batch=0)
    p.update(kw)
    return abi.GENERATE_PARAMS_STRUCT.pack(*(p[name] for name, _ in abi.GENERATE_PARAMS_LAYOUT))


def _stops(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(s)) + s for s in items)


def _start(g: Guest, prompt: bytes = b"Hello", stops: bytes = b"", **kw) -> int:
    with g.buffer(_params(**kw)) as p, g.buffer(prompt) as t, g.buffer(stops) as s:
        return g.call("guest_generate_start", p, t, len(prompt), s, len(stops))


def _guest_generate(g: Guest, prompt: str, **kw) -> tuple[list[int], str]:
    pieces: list[str] = []
    g.host.text_sink = pieces.append
    assert _start(g, prompt.encode(), **kw) > 0
    assert g.call("guest_generate_prefill") == 0
    n = g.call("guest_generate_run")
    assert n >= 0, n
    r = abi.GENERATE_RESULT_STRUCT.unpack(g.read(g.call("guest_generate_result"), abi.GENERATE_RESULT_SIZE))
    ids = np.frombuffer(g.read(r[0], 4 * (r[1] + r[2])), dtype="<i4").tolist()
    assert g.call("guest_generate_end") == 0
    return ids[r[1]:], "".join(pieces)


@pytest.fixture
def guest(rt, smollm2_path):
    g = Guest(rt.store, threads=2)
    g.attach(rt.model(smollm2_path).id)
    yield g
    g.close()


def test_export_refusals(guest):
    g = guest
    assert g.call("guest_generate_prefill") == Err.BAD_ARGUMENT  # nothing started
    assert g.call("guest_generate_run") == Err.BAD_ARGUMENT
    assert g.call("guest_generate_result") == 0
    assert g.call("guest_generate_end") == abi.OK
    bad = [dict(flags=8), dict(temperature=float("nan")), dict(repeat_penalty=0.0), dict(penalty_last_n=-1),
           dict(n_batch=abi.FORWARD_MAX_TOKENS + 1), dict(n_ctx=8193)]
    for kw in bad:
        assert _start(g, **kw) == Err.BAD_ARGUMENT, kw
    for stops in [b"\x05\x00\x00", _stops(b"") , _stops(b"a") + b"\x09\x00\x00\x00ab",
                  _stops(*[b"x"] * 17), _stops(b"x" * 1025)]:
        assert _start(g, stops=stops) == Err.BAD_ARGUMENT, stops
    assert _start(g, stops=_stops(b"ok", b"\xff\xfe")) == Err.BAD_UTF8
    assert _start(g, n_ctx=1, max_tokens=0) == Err.CONTEXT_FULL  # "Hello" is one token: no room left
    assert _start(g, n_ctx=10, max_tokens=10) == Err.CONTEXT_FULL
    assert _start(g, b"", max_tokens=1) == 1  # an empty prompt starts from BOS
    assert g.call("guest_generate_run") == Err.BAD_ARGUMENT  # not prefilled
    assert g.call("guest_generate_prefill") == abi.OK
    assert g.call("guest_generate_prefill") == Err.BAD_ARGUMENT
    assert g.call("guest_generate_end") == abi.OK
    assert g.host._kv == {}  # the KV cache went with it
    with g.buffer(b"x") as t:
        assert g.call("guest_tokenize", t, 1, 4, 0, 0) == Err.BAD_ARGUMENT
        assert g.call("guest_tokenize", t, 1, 0, t, 0) == 1  # a size query writes nothing
    with g.buffer(struct.pack("<i", 504)) as ids:  # SmolLM2's "The"
        assert g.call("guest_detokenize", ids, 1, 2, 0, 0) == Err.BAD_ARGUMENT
        assert g.call("guest_detokenize", ids, 1, 0, 0, 0) == 3
        assert g.call("guest_detokenize", ids, 1, 0, ids, 0) == 3  # a size query writes nothing
        assert g.call("guest_detokenize", ids, 1, 0, ids, 2) == Err.BUFFER_TOO_SMALL


def test_host_stop_and_errors_from_emit_text(guest):
    g = guest
    seen: list[str] = []
    g.host.text_sink = lambda piece: seen.append(piece) or len(seen) == 3  # stop after the third piece
    assert _start(g, b"Once upon a time", max_tokens=50) > 0
    assert g.call("guest_generate_prefill") == abi.OK
    n = g.call("guest_generate_run")
    r = abi.GENERATE_RESULT_STRUCT.unpack(g.read(g.call("guest_generate_result"), abi.GENERATE_RESULT_SIZE))
    assert r[-1] == abi.StopReason.HOST and len(seen) == 3 and n == r[2] < 50
    g.call("guest_generate_end")

    def boom(piece: str) -> bool:
        raise RuntimeError("host failure")

    g.host.text_sink = boom
    assert _start(g, b"Once upon a time", max_tokens=5) > 0
    assert g.call("guest_generate_prefill") == abi.OK
    assert g.call("guest_generate_run") == Err.INTERNAL
    g.call("guest_generate_end")


def test_model_without_tokenizer_or_forward(rt, tmp_path):
    require("gguf")
    from gguf_helpers import write_tiny_llama

    rt2 = Realm(threads=1)
    try:
        tiny = rt2.load_model(write_tiny_llama(tmp_path / "tiny.gguf"))
        # the tiny llama's 64-token vocabulary: its empty prompt is [BOS], and it generates until
        # its context (256) is full
        c = rt2.complete("", tiny, max_tokens=None, temperature=0, ignore_eos=True)
        assert c.prompt_tokens == [1] and len(c.tokens) == 255 and c.stop_reason == "length"
        assert c.usage.decoded_tokens == 254
    finally:
        rt2.close()
    with Realm(threads=1) as rt3:
        from gguf_helpers import RawTensor, build_gguf
        from realm.quants import GGMLType
        from realm.reader import GGUFValueType as VT

        raw, _ = build_gguf([("general.architecture", VT.STRING, "llama")],
                            [RawTensor("w", (16,), GGMLType.F32, np.zeros(16, np.float32).tobytes())])
        (tmp_path / "bare.gguf").write_bytes(raw)
        bare = rt3.load_model(tmp_path / "bare.gguf")
        with pytest.raises(GuestError) as err:
            rt3.tokenize("hi", bare)
        assert err.value.code == Err.UNSUPPORTED and "tokenizer" in str(err.value)
        with pytest.raises(GenerationError):
            rt3.generate("hi", bare, n_ctx=16)


# -- the Realm API's edges ----------------------------------------------------------------------------

def test_models_and_options(rt, smollm2_path, gemma3_path):
    smol, gemma = rt.model(smollm2_path), rt.model(gemma3_path)
    assert rt.model() == smol  # the first loaded is the default
    assert rt.model(smol.id) == rt.model(str(smollm2_path)) == smol
    assert rt.load_model(smollm2_path) == smol  # loading again shares the model
    assert (smol.architecture, smol.n_vocab, smol.n_ctx_train) == ("llama", 49152, 8192)
    assert (gemma.architecture, gemma.n_vocab, gemma.bos_token) == ("gemma3", 262144, "<bos>")
    with pytest.raises(KeyError):
        rt.model("not-loaded")
    for bad in [dict(max_tokens=0), dict(temperature=float("nan")), dict(top_k=1.5), dict(seed=-1),
                dict(stop=[""]), dict(stop=["x"] * 17), dict(repeat_penalty=0), dict(n_ctx=1)]:
        with pytest.raises(ValueError):
            rt.generate("x", **bad)
    with pytest.raises(TypeError):
        rt.complete("x", top_q=0.5)


def test_unload_and_close(smollm2_path):
    r = Realm(threads=1)
    m = r.load_model(smollm2_path)
    assert r.detokenize(r.tokenize("Hi there", add_special=False)) == "Hi there"
    r.unload_model(m)
    with pytest.raises(KeyError):
        r.generate("x")
    m2 = r.load_model(smollm2_path)
    assert m2.id != m.id
    with pytest.raises(ModelNotFoundError) as info:  # a handle of the unloaded model
        r.generate("x", m)
    assert str(info.value) == f"model '{m.name}' (id {m.id}) is not loaded in this Realm"  # not the template
    r.close()
    assert len(r.store) == 0
    for call in (lambda: r.generate("x"), lambda: r.complete("x", m2), lambda: r.tokenize("x"),
                 lambda: r.load_model(smollm2_path)):
        with pytest.raises(ClosedError):
            call()
    r.close()  # twice: nothing more


def test_a_tokenizer_guest_that_can_no_longer_run_is_replaced(smollm2_path):
    """The guest Realm keeps for tokenize/detokenize is dropped once it fails (a deadline, a trap;
    here: closed), and the next call gets a fresh one."""
    with Realm(threads=1) as r:
        m = r.load_model(smollm2_path)
        with r._tokenizer(m) as g:
            g.close()
        assert g.failed and r.detokenize(r.tokenize("Hi there", add_special=False)) == "Hi there"
        with r._tokenizer(m) as fresh:
            assert fresh is not g and fresh.failed is None


def test_an_attached_generation_keeps_its_model_when_it_is_unloaded(smollm2_path):
    """Issue 10: a guest that attached before the model was unloaded prefills and decodes on
    (the host's hold on a shared model makes its forward pass; it answered NO_MODEL before)."""
    with Realm(threads=1) as r:
        m = r.load_model(smollm2_path)
        expected = r.complete("The capital of France is", max_tokens=8, temperature=0, ignore_eos=True).tokens
        with Guest(r.store, threads=1) as g:
            g.attach(m.id)
            r.unload_model(m)
            assert m.id not in r.store
            tokens, _ = _guest_generate(g, "The capital of France is", max_tokens=8)
        assert tokens == expected
        with pytest.raises(KeyError):  # the guest's hold was the last: the model is gone now
            r.store.get(m.id)


# -- realm generate -----------------------------------------------------------------------------------

def test_cli_generate_streams_the_text(rt, smollm2_path, capsys):
    from realm.cli import main

    want = rt.generate("The capital of France is", smollm2_path, max_tokens=8, temperature=0)
    assert main(["generate", "The capital of France is", "--model", str(smollm2_path), "-n", "8", "-t", "0",
                 "--stats"]) == 0
    out, err = capsys.readouterr()
    assert out == want + ("" if want.endswith("\n") else "\n")
    assert "5 prompt tokens" in err and "8 generated" in err and "guest memory" in err
    assert main(["generate", "x", "--model", str(smollm2_path), "-n", "5", "--n-ctx", "4"]) == 1
    assert "do not fit the context" in capsys.readouterr().err


def test_cli_generate_subprocess_default_model_reads_stdin(rt, smollm2_path):
    """Without --model, realm generate uses SmolLM2 (pulled into REALM_HOME on first use); without
    a prompt it reads stdin."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "realm", "generate", "-n", "6", "-t", "0", "--threads", "2"],
                          input="1, 2, 3, 4, 5,", capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    want = rt.generate("1, 2, 3, 4, 5,", smollm2_path, max_tokens=6, temperature=0)
    assert proc.stdout == want + "\n" and want.startswith(" 6, 7")


@pytest.mark.parametrize("name", ["qwen2", "qwen3", "phi3", "llama3", "mistral", "llama-iq2-iq3", "llama-iq1-tq"])
def test_each_architecture_generates_llama_cpps_greedy_tokens(tmp_path, name):
    """Each architecture's tiny model (forward_helpers.TINY_ARCHS: biases, q/k norms, fused
    matrices, rope_freqs, an ignored window), and the tiny models in the IQ and TQ formats
    (TINY_FORMATS), through the guest: its greedy continuation of BOS (the tiny vocabulary has
    no byte tokens: an empty prompt starts from BOS) is llama.cpp's."""
    require("gguf")
    llama_cpp = require("llama_cpp")
    from forward_helpers import TINY_ARCHS, TINY_FORMATS, write_tiny

    path = write_tiny(tmp_path / f"{name}.gguf", seed=4, **(TINY_ARCHS | TINY_FORMATS)[name])
    with Realm(threads=2) as r:
        c = r.complete("", r.load_model(path), max_tokens=12, temperature=0, ignore_eos=True)
    assert c.prompt_tokens == [1]
    llm = llama_cpp.Llama(str(path), n_ctx=64, n_threads=2, logits_all=True, verbose=False)
    want = []
    llm.eval([1])
    for _ in range(12):
        want.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([want[-1]])
    llm.close()
    assert c.tokens == want


def test_a_program_may_exit_with_generations_running(tmp_path, smollm2_path):
    """A program that ends with generations still running -- streams left open, daemon threads
    in the middle of `complete` -- exits cleanly: at the interpreter's exit realm stops them and
    waits for them (a guest or pass left running into the teardown crashed the process)."""
    script = tmp_path / "leave.py"
    script.write_text(textwrap.dedent(f"""
        import threading, time
        import realm
        r = realm.Realm(threads=2)
        m = r.load_model({str(smollm2_path)!r})
        streams = []
        for i in range(8):
            s = r.generate(f"Story {{i}}:", model=m, max_tokens=400, ignore_eos=True, stream=True)
            next(s)
            streams.append(s)

        def run():
            try:
                r.complete("Tell me a story", model=m, max_tokens=400, ignore_eos=True)
            except realm.RealmError:
                pass

        for _ in range(4):
            threading.Thread(target=run, daemon=True).start()
        time.sleep(0.3)
        print("exiting", flush=True)
    """))
    for _ in range(2):
        res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0 and res.stdout == "exiting\n", res.stderr[-3000:]
        assert "Segmentation" not in res.stderr and "panicked" not in res.stderr
