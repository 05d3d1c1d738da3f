"""The guest's tokenizers (guest/tokenizer*.c, guest/unicode.c) against llama.cpp.

The C sources are compiled natively (tests/guest_native.py) and fed the real
vocabularies of SmolLM2 (byte-level BPE, "smollm") and Gemma 3 (SentencePiece,
262,144 tokens), and of vocab-only GGUF files written with gguf.GGUFWriter that
give SmolLM2's vocabulary the other pre-tokenizers.  Every expected value comes
from llama.cpp itself (llama-cpp-python): token ids, pieces, attributes,
end-of-generation tokens, and the Unicode classes its pre-tokenizers use.
"""

from __future__ import annotations

import ctypes as C
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import require
import guest_native as gn

LLAMA_ATTRS = 0x3F  # the llama_token_attr bits the guest implements (no lstrip/rstrip/normalized)

CORPUS = [
    "",
    " ",
    "Hello world",
    "Hello, world! How are you today?",
    "The capital of France is",
    "   leading spaces",
    "trailing spaces   ",
    "multiple   spaces    inside",
    "\n",
    "\n\n\n",
    "line one\nline two\r\nline three\n\n\nend",
    "\ttabs\t\tand\t \tmixes \t\n",
    "  \n  \n\t\n ",
    "café naïve façade résumé Ångström",
    "Zürich straße ÆØÅ œuvre",
    "日本語のテキストと中文文本和한국어",
    "emoji 😀🎉👍🏽 and flags 🇫🇷🇯🇵 and zwj 👨‍👩‍👧",
    "12345678901234567890",
    "3.14159 and 1,000,000 and -42 and 1e-10",
    "٠١٢٣٤٥ ۱۲۳ ①②③ Ⅻ ½",
    "def f(x):\n    return x ** 2  # square\n",
    "int main(void) { printf(\"%d\\n\", a[i] != b); return 0; }",
    "x = [1, 2, 3]; y = {'a': 1}; z = x | y & ~w ^ v",
    "$100 + 50% = <value> ^ 2 ~ |pipe| `tick`",
    "It's they're we've I'm you'll he'd IT'S THEY'RE WE'VE I'M",
    "'s 't 're 've 'm 'll 'd 'x '",
    "Mixed: English, Русский, Ελληνικά, עברית, العربية, हिन्दी, ไทย",
    "combining: e\u0301 a\u0308 n\u0303 \u0915\u094d\u0937",
    "no-break\u00a0space, ideographic\u3000space, line\u2028sep, nel\u0085x",
    "zero\u200bwidth joiner\u200d and bom\ufeff",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|><|endoftext|>text<|im_start|>",
    "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n",
    "<bos><eos><pad><unk><mask> and </s> <s>",
    "<table><tr><td>cell</td></tr></table> <h1>Title</h1>",
    "word\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\nafter",
    " " * 40 + "x",
    "\t" * 35,
    "a" * 300,
    "unassigned \U000e0080 \U0003fffe private \ue000\U000f0000 cjk-ext-i \U0002ebf0",
    "Unicode 15.1 \u2ffc\u31ef and 16.0 \u1c89\U00010d40",
    "control \x00\x01\x1c\x1f\x7f\x80\x9f chars",
    # periodic text around special tokens (the special-token search's worst case)
    "<" * 300 + "<|im_start|>" + "<|" * 100 + "<|im_end|><|im_end|>" + "<|im_start" * 30,
    ("\n" * 20 + "x") * 40 + "\n" * 100 + "\t" * 29 + " " * 33,
    "<start_of_turn" * 40 + "<start_of_turn>" + "<end_of_turn" * 40,
]

INVALID_UTF8 = [
    b"\xff\xfe plain",
    b"abc\x80def",
    b"\xc3(",
    b"\xe2\x82",
    b"\xe2\x82 x",
    b"\xf0\x9f\x98",
    b"\xf0\x9f\x98 z",
    b"\xed\xa0\x80 lone surrogate \xed\xb0\x80",
    b"\xc0\xaf overlong \xc1\x81 \xe0\x80\xaf",
    b"\xf8\x88\x80\x80\x80 five \xfc\x84\x80\x80\x80\x80",
    b" \xc3\xa9\xc3 \xa9 ",
    b"\x80\x80\x80",
    b"<|im_start|>\xff<|im_end|>",
]

FLAG_COMBOS = [(False, False), (True, False), (False, True), (True, True)]


def llama_decodes_above_unicode(text: bytes) -> bool:
    """Whether llama.cpp's lenient UTF-8 decoder would yield a codepoint above U+10FFFF
    (it throws while re-encoding those: a byte-level BPE input it cannot handle)."""
    i = 0
    while i < len(text):
        b = text[i]
        n = 1 if b < 0x80 else 0 if b < 0xC0 else 2 if b < 0xE0 else 3 if b < 0xF0 else 4 if b < 0xF8 else 0
        if n > 1 and i + n <= len(text) and all(0x80 <= c < 0xC0 for c in text[i + 1:i + n]):
            if n == 4 and (((b & 7) << 18) | ((text[i + 1] & 0x3F) << 12)) > 0x10FFFF:
                return True
            i += n
        else:
            i += 1
    return False


# ---- references: llama.cpp --------------------------------------------------------------


class LlamaVocab:
    """llama.cpp's tokenizer for a GGUF file (vocab_only)."""

    def __init__(self, path: Path):
        llama_cpp = self.llama_cpp = require("llama_cpp")
        self.llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        self.vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)

    def tokenize(self, text: bytes, add_special: bool, parse_special: bool) -> list[int]:
        cap = len(text) * 3 + 16
        buf = (self.llama_cpp.llama_token * cap)()
        n = self.llama_cpp.llama_tokenize(self.vocab, text, len(text), buf, cap, add_special, parse_special)
        assert n >= 0, n
        return list(buf[:n])

    def piece(self, token: int, special: bool) -> bytes:
        buf = C.create_string_buffer(64)
        n = self.llama_cpp.llama_token_to_piece(self.vocab, token, buf, 64, 0, special)
        if n < 0:
            buf = C.create_string_buffer(-n)
            n = self.llama_cpp.llama_token_to_piece(self.vocab, token, buf, -n, 0, special)
        return buf.raw[:n]

    def detokenize(self, ids: list[int], special: bool = False) -> bytes:
        return b"".join(self.piece(i, special) for i in ids)

    def attr(self, token: int) -> int:
        return self.llama_cpp.llama_vocab_get_attr(self.vocab, token)

    def is_eog(self, token: int) -> bool:
        return bool(self.llama_cpp.llama_vocab_is_eog(self.vocab, token))


def write_vocab_gguf(path: Path, src: Path, *, pre: str | None, drop_pre: bool = False) -> Path:
    """A vocab-only GGUF (no tensors) with src's metadata and tokenizer.ggml.pre replaced."""
    gguf = require("gguf")
    from realm.reader import GGUFValueType as VT, StringArray, open_gguf

    with open_gguf(src) as g:
        md, types = dict(g.metadata), dict(g.value_types)
        writer = gguf.GGUFWriter(str(path), arch=md["general.architecture"])
        for key, value in md.items():
            if key == "general.architecture" or (key == "tokenizer.ggml.pre" and (drop_pre or pre is not None)):
                continue
            vtype = types[key]
            if vtype[0] == VT.ARRAY:
                items = [value.raw(i) for i in range(len(value))] if isinstance(value, StringArray) else value.tolist()
                writer.add_key_value(key, items, gguf.GGUFValueType(vtype[0]), gguf.GGUFValueType(vtype[1]))
            else:
                writer.add_key_value(key, value, gguf.GGUFValueType(vtype[0]))
        if pre is not None and not drop_pre:
            writer.add_string("tokenizer.ggml.pre", pre)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.close()
    return path


# ---- fixtures ---------------------------------------------------------------------------


def load_pair(native: gn.Native, path: Path):
    from realm.reader import open_gguf

    ref = LlamaVocab(path)
    with open_gguf(path) as g:
        vocab, keep = gn.vocab_from_metadata(g.metadata)
    tok = gn.Tokenizer(native, vocab, keep)
    assert tok.error == 0, tok.error
    return tok, ref


@pytest.fixture(scope="module")
def smollm2(native, smollm2_path):
    return load_pair(native, smollm2_path)


@pytest.fixture(scope="module")
def gemma3(native, gemma3_path):
    return load_pair(native, gemma3_path)


@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def model(request):
    return request.getfixturevalue(request.param)


PRE_VARIANTS = ["gpt-2", "llama-bpe", "qwen2", "default", "smollm", "starcoder", None]


@pytest.fixture(scope="module", params=PRE_VARIANTS, ids=[p or "absent" for p in PRE_VARIANTS])
def bpe_variant(request, native, smollm2_path, tmp_path_factory):
    pre = request.param
    path = write_vocab_gguf(tmp_path_factory.mktemp("vocab") / f"smollm2-{pre or 'absent'}.gguf",
                            smollm2_path, pre=pre, drop_pre=pre is None)
    return load_pair(native, path)


# ---- Unicode classes --------------------------------------------------------------------


def test_unicode_classes_match_llama_cpp(native):
    """Category and whitespace flags of every codepoint equal llama.cpp's unicode_cpt_flags_from_cpt,
    and the ASCII case folding the llama3/qwen2 contractions use is llama.cpp's unicode_tolower."""
    require("llama_cpp")
    import llama_cpp

    lib = C.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libllama.so"))
    try:
        ref_flags = lib._Z26unicode_cpt_flags_from_cptj
        ref_lower = lib._Z15unicode_tolowerj
    except AttributeError:
        pytest.skip("this libllama does not export its unicode helpers")
    ref_flags.restype, ref_flags.argtypes = C.c_uint16, [C.c_uint32]
    ref_lower.restype, ref_lower.argtypes = C.c_uint32, [C.c_uint32]

    n = 0x110000 + 16
    mine = native.unicode_flags(0, n)
    ref = np.fromiter((ref_flags(c) & 0x1FF for c in range(n)), dtype=np.uint16, count=n)
    bad = np.nonzero(mine != ref)[0]
    assert bad.size == 0, [(hex(c), hex(mine[c]), hex(ref[c])) for c in bad[:10]]

    letters = {ord(ch) for ch in "strevmld"}
    folded = [c for c in range(0x110000) if ref_lower(c) in letters]
    assert sorted(folded) == sorted(letters | {c - 32 for c in letters})


# ---- the two real vocabularies ----------------------------------------------------------


@pytest.mark.parametrize("add_special,parse_special", FLAG_COMBOS)
def test_corpus_matches_llama_cpp(model, add_special, parse_special):
    tok, ref = model
    for text in CORPUS:
        raw = text.encode()
        assert tok.encode(raw, add_special, parse_special) == ref.tokenize(raw, add_special, parse_special), text


@pytest.mark.parametrize("add_special,parse_special", FLAG_COMBOS)
def test_invalid_utf8_matches_llama_cpp(model, add_special, parse_special):
    tok, ref = model
    for raw in INVALID_UTF8:
        assert tok.encode(raw, add_special, parse_special) == ref.tokenize(raw, add_special, parse_special), raw


def test_long_text_matches_llama_cpp(model):
    tok, ref = model
    raw = ("\n".join(CORPUS) * 8).encode()
    assert tok.encode(raw, True, True) == ref.tokenize(raw, True, True)


PIECES = ["a", "ab", " ", "  ", "\n", "\t", "\r\n", "'s", "'T", "'re", "'LL", "1", "123", "1234567",
          "<|im_start|>", "<|im_end|>", "<start_of_turn>", "<end_of_turn>", "</s>", "<s>", "<eos>",
          "\u3000", "\u00a0", "\u2028", "\u0085", ".", "...", "$", "é", "日本", "😀", "\u0301", "<0x41>"]
TEXT = st.lists(st.one_of(st.text(st.characters(blacklist_categories=("Cs",)), max_size=8),
                          st.sampled_from(PIECES)), max_size=12).map("".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT, add_special=st.booleans(), parse_special=st.booleans())
def test_generated_text_matches_llama_cpp(model, text, add_special, parse_special):
    tok, ref = model
    raw = text.encode()
    ids = tok.encode(raw, add_special, parse_special)
    assert ids == ref.tokenize(raw, add_special, parse_special)
    # detokenize(tokenize(s)) == s wherever llama.cpp round-trips too
    if not add_special and not parse_special:
        assert (tok.detokenize(ids) == raw) == (ref.detokenize(ids) == raw)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=24), parse_special=st.booleans())
def test_generated_bytes_match_llama_cpp(model, raw, parse_special):
    tok, ref = model
    if tok.info.kind == gn.TOK_KIND_BPE and llama_decodes_above_unicode(raw):
        return  # llama.cpp throws on these (see tokenizer.h)
    assert tok.encode(raw, False, parse_special) == ref.tokenize(raw, False, parse_special)


def test_roundtrip_corpus(model):
    tok, ref = model
    for text in CORPUS:
        raw = text.encode()
        ids = tok.encode(raw)
        assert tok.detokenize(ids) == ref.detokenize(ids)
        if ref.detokenize(ids) == raw:
            assert tok.detokenize(ids) == raw


def test_pieces_match_llama_cpp(model):
    """token_to_piece for every id, special tokens rendered; and not rendered for the special ones."""
    tok, ref = model
    n = ref.n_vocab
    assert tok.info.n_vocab == n
    mine = tok.all_pieces(special=True)
    bad = [i for i in range(n) if mine[i] != ref.piece(i, True)]
    assert not bad, [(i, mine[i], ref.piece(i, True)) for i in bad[:5]]
    plain = tok.all_pieces(special=False)
    special_ids = [i for i in range(n) if tok.attr(i) & 0b1001]  # control | unknown
    assert special_ids
    for i in special_ids + list(range(0, n, 97)):
        assert plain[i] == ref.piece(i, False), i


def test_attributes_and_special_ids_match_llama_cpp(model):
    tok, ref = model
    lc, v = ref.llama_cpp, ref.vocab
    mine = np.array([tok.attr(i) for i in range(ref.n_vocab)])
    theirs = np.array([ref.attr(i) & LLAMA_ATTRS for i in range(ref.n_vocab)])
    bad = np.nonzero(mine != theirs)[0]
    assert bad.size == 0, [(int(i), int(mine[i]), int(theirs[i])) for i in bad[:5]]
    eog = sorted(tok.info.eog[:tok.info.n_eog])
    assert eog == [i for i in range(ref.n_vocab) if ref.is_eog(i)]
    assert all(tok.is_eog(i) for i in eog) and not tok.is_eog(-1) and not tok.is_eog(ref.n_vocab)
    info = tok.info
    assert (info.bos_id, info.eos_id, info.eot_id, info.sep_id, info.pad_id) == (
        lc.llama_vocab_bos(v), lc.llama_vocab_eos(v), lc.llama_vocab_eot(v), lc.llama_vocab_sep(v),
        lc.llama_vocab_pad(v))
    assert (info.fim_pre_id, info.fim_suf_id, info.fim_mid_id, info.fim_pad_id, info.fim_rep_id,
            info.fim_sep_id) == (lc.llama_vocab_fim_pre(v), lc.llama_vocab_fim_suf(v), lc.llama_vocab_fim_mid(v),
                                 lc.llama_vocab_fim_pad(v), lc.llama_vocab_fim_rep(v), lc.llama_vocab_fim_sep(v))
    assert bool(info.add_bos) == lc.llama_vocab_get_add_bos(v)
    assert bool(info.add_eos) == lc.llama_vocab_get_add_eos(v)


def test_find_and_pieces_api(smollm2):
    tok, ref = smollm2
    assert tok.find(b"<|im_start|>") == ref.tokenize(b"<|im_start|>", False, True)[0]
    assert tok.find(b"no such token \xff") == -1
    assert tok.lib.tokenizer_piece(tok.handle, -1, 1, None, 0) == gn.TOK_ERR["BAD_TOKEN"]
    assert tok.lib.tokenizer_piece(tok.handle, tok.info.n_vocab, 1, None, 0) == gn.TOK_ERR["BAD_TOKEN"]
    # a piece that does not fit reports its length and writes nothing past max
    buf = C.create_string_buffer(b"\xAA" * 8, 8)
    token = tok.find(b"<|im_start|>")
    assert tok.lib.tokenizer_piece(tok.handle, token, 1, buf, 4) == len(b"<|im_start|>")
    assert buf.raw[4:] == b"\xAA" * 4


# ---- the other pre-tokenizers (SmolLM2's vocabulary, rewritten tokenizer.ggml.pre) -------


@pytest.mark.parametrize("add_special,parse_special", [(False, False), (True, True)])
def test_pretokenizer_corpus_matches_llama_cpp(bpe_variant, add_special, parse_special):
    tok, ref = bpe_variant
    for text in CORPUS:
        raw = text.encode()
        assert tok.encode(raw, add_special, parse_special) == ref.tokenize(raw, add_special, parse_special), text
    for raw in INVALID_UTF8:
        assert tok.encode(raw, add_special, parse_special) == ref.tokenize(raw, add_special, parse_special), raw


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT)
def test_pretokenizer_generated_text_matches_llama_cpp(bpe_variant, text):
    tok, ref = bpe_variant
    raw = text.encode()
    assert tok.encode(raw) == ref.tokenize(raw, False, False)


def test_pretokenizer_flags(bpe_variant):
    """llama-bpe ignores merges for whole-vocabulary words; its BOS default is overridden by the file."""
    tok, ref = bpe_variant
    assert bool(tok.info.add_bos) == ref.llama_cpp.llama_vocab_get_add_bos(ref.vocab)


# ---- bad input --------------------------------------------------------------------------


def make_vocab(tokens: list[bytes], *, kind=gn.TOK_KIND_SPM, merges=None, scores=None, types=None,
               pre: bytes | None = None, **fields):
    v = gn.TokVocab()
    for name in gn._ID_FIELDS:
        setattr(v, name, -1)
    v.add_bos = v.add_eos = v.add_space_prefix = -1
    v.kind = kind
    keep = []
    blob = C.create_string_buffer(gn.gguf_strings(tokens), max(1, sum(8 + len(t) for t in tokens)))
    keep.append(blob)
    v.tokens = gn.GGUFStrings(C.cast(blob, C.c_void_p), len(blob), len(tokens))
    if merges is not None:
        mblob = C.create_string_buffer(gn.gguf_strings(merges), max(1, sum(8 + len(m) for m in merges)))
        keep.append(mblob)
        v.merges = gn.GGUFStrings(C.cast(mblob, C.c_void_p), len(mblob), len(merges))
    if scores is not None:
        arr = np.asarray(scores, dtype=np.float32)
        keep.append(arr)
        v.scores = gn.GGUFNumbers(arr.ctypes.data, len(arr), gn.TOK_GGUF_F32)
    if types is not None:
        arr = np.asarray(types, dtype=np.int32)
        keep.append(arr)
        v.token_types = gn.GGUFNumbers(arr.ctypes.data, len(arr), gn.TOK_GGUF_I32)
    if pre is not None:
        keep.append(pre)
        v.pre, v.pre_len = pre, len(pre)
    for name, value in fields.items():
        setattr(v, name, value)
    return v, keep


SPM_TOKENS = [b"<unk>", b"<s>", b"</s>"] + [b"<0x%02X>" % i for i in range(256)] + [
    b"\xe2\x96\x81", b"a", b"b", b"ab", b"\xe2\x96\x81ab", b"<ctl>"]
SPM_TYPES = [2, 3, 3] + [6] * 256 + [1, 1, 1, 1, 1, 3]


def test_bad_vocabularies_are_refused(native):
    E = gn.TOK_ERR

    def init(**kw):
        tokens = kw.pop("tokens", SPM_TOKENS)
        v, keep = make_vocab(tokens, **kw)
        return gn.Tokenizer(native, v, keep).error

    assert init(types=SPM_TYPES) == 0
    assert init(tokens=[]) == E["BAD_VOCAB"]
    assert init(tokens=[b"a", b"b", b"a"]) == E["DUPLICATE_TOKEN"]
    assert init(kind=7) == E["UNKNOWN_MODEL"]
    assert init(scores=[0.0] * 3) == E["BAD_VOCAB"]            # fewer scores than tokens
    assert init(types=[1] * 3) == E["BAD_VOCAB"]
    assert init(kind=gn.TOK_KIND_BPE, pre=b"no-such-pre", merges=[b"a b"]) == E["UNKNOWN_PRE"]
    assert init(kind=gn.TOK_KIND_BPE, pre=b"gpt-2") == E["NO_MERGES"]
    assert init(tokens=[b"x"], add_bos=1) == E["MISSING_SPECIAL"]  # the default BOS (1) is out of range
    assert init(add_bos=2) == E["BAD_ARG"]


def test_bad_vocabulary_arrays(native):
    """Truncated or overflowing string arrays are refused, never read past their size."""
    good = gn.gguf_strings([b"a", b"bc"])
    for blob, count in [(good[:-1], 2), (good, 3), (b"\xff" * 8 + b"x", 1), (good[:5], 1), (b"", 1)]:
        buf = C.create_string_buffer(blob, max(1, len(blob)))
        v, keep = make_vocab([b"a"])
        v.tokens = gn.GGUFStrings(C.cast(buf, C.c_void_p), len(blob), count)
        assert gn.Tokenizer(native, v, keep + [buf]).error == gn.TOK_ERR["BAD_VOCAB"], (blob, count)


@settings(max_examples=150, deadline=None)
@given(tokens=st.lists(st.binary(min_size=1, max_size=5), min_size=1, max_size=40, unique=True),
       merges=st.lists(st.binary(max_size=7), max_size=30), kind=st.sampled_from([gn.TOK_KIND_BPE, gn.TOK_KIND_SPM]),
       types=st.one_of(st.none(), st.lists(st.integers(-2, 8), min_size=40, max_size=40)),
       scores=st.one_of(st.none(), st.lists(st.floats(width=32), min_size=40, max_size=40)),
       pre=st.sampled_from([b"gpt-2", b"qwen2", b"llama-bpe", b"default", b"smollm"]),
       texts=st.lists(st.binary(max_size=30), max_size=3))
def test_arbitrary_vocabularies_are_safe(native, tokens, merges, kind, types, scores, pre, texts):
    """Any well-formed arrays: init succeeds or refuses cleanly; encode yields valid ids; every piece renders."""
    n = len(tokens)
    v, keep = make_vocab(tokens, kind=kind, merges=merges, pre=pre,
                         types=None if types is None else types[:n], scores=None if scores is None else scores[:n],
                         bos_id=0, eos_id=n - 1, unk_id=-1)
    tok = gn.Tokenizer(native, v, keep)
    if tok.error:
        assert tok.error in gn.TOK_ERR.values()
        return
    for text in texts:
        for add_special, parse_special in FLAG_COMBOS:
            rc, count, ids = tok.encode_raw(text, add_special, parse_special)
            assert rc in (0, gn.TOK_ERR["NO_BYTE_TOKEN"])
            assert all(0 <= i < n for i in ids)
    for i in range(n):
        tok.piece(i, True)
        tok.piece(i, False)


def test_tiny_spm_vocabulary(native):
    """A hand-made SPM vocabulary: merges by score, byte fallback, the space prefix, control text."""
    scores = [0.0] * 259 + [-1.0, -2.0, -2.0, -1.5, -0.5, 0.0]
    v, keep = make_vocab(SPM_TOKENS, scores=scores, types=SPM_TYPES)
    tok = gn.Tokenizer(native, v, keep)
    assert tok.error == 0
    ab, a = SPM_TOKENS.index(b"\xe2\x96\x81ab"), SPM_TOKENS.index(b"a")
    assert tok.encode(b"ab", add_special=True) == [1, ab]                  # BOS, then "▁ab"
    assert tok.encode(b"ab a") == [ab, SPM_TOKENS.index(b"\xe2\x96\x81"), a]
    assert tok.encode(b"abc") == [ab, 3 + ord("c")]                       # 'c' falls back to <0x63>
    assert tok.encode(b"<ctl>", parse_special=True) == [SPM_TOKENS.index(b"<ctl>")]
    assert tok.piece(ab) == b" ab" and tok.piece(3 + 0x41) == b"A" and tok.piece(1, special=False) == b""


def test_encode_bounds(smollm2):
    tok, _ = smollm2
    E = gn.TOK_ERR
    text = b"Hello world, this is a test"
    rc, n, ids = tok.encode_raw(text, False, False)
    assert rc == 0 and n == len(ids) > 2
    rc, n2, first = tok.encode_raw(text, False, False, out_max=2)
    assert rc == E["BUFFER_TOO_SMALL"] and n2 == n and first == ids[:2]
    rc, n3, _ = tok.encode_raw(b"x" * (gn.TOK_MAX_TEXT_LEN + 1), False, False)
    assert rc == E["TOO_LONG"] and n3 == 0
    rc, n4, ids4 = tok.encode_raw(b"x" * gn.TOK_MAX_TEXT_LEN, False, False)
    assert rc == 0 and n4 > 0
    out = (C.c_int32 * 4)()
    n = C.c_uint32()
    assert tok.lib.tokenizer_encode(None, b"x", 1, 0, 0, out, 4, C.byref(n)) == E["BAD_ARG"]
    assert tok.lib.tokenizer_encode(tok.handle, None, 5, 0, 0, out, 4, C.byref(n)) == E["BAD_ARG"]


# ---- streaming UTF-8 --------------------------------------------------------------------


def stream(native: gn.Native, chunks: list[bytes]) -> list[bytes]:
    state = (C.c_uint32 * 2)()  # tok_utf8_stream: 3 pending bytes, a u32 count
    out = []
    for chunk in chunks:
        buf = C.create_string_buffer(len(chunk) + 3)
        n = native.lib.tok_utf8_stream_feed(state, chunk, len(chunk), buf)
        out.append(buf.raw[:n])
    buf = C.create_string_buffer(3)
    n = native.lib.tok_utf8_stream_flush(state, buf)
    out.append(buf.raw[:n])
    return out


def test_streamed_pieces_are_whole_characters(native, model):
    tok, _ = model
    text = "emoji 😀🎉👍🏽 日本語 café 🇫🇷 done".encode()
    ids = tok.encode(text)
    pieces = [tok.piece(i) for i in ids]
    if tok.info.kind == gn.TOK_KIND_BPE:  # byte-level BPE splits characters across tokens
        assert any(p.decode("utf-8", "ignore").encode() != p for p in pieces)
    out = stream(native, pieces)
    assert b"".join(out) == text
    for chunk in out:
        chunk.decode("utf-8")  # strict: only whole characters come out


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=40), cuts=st.lists(st.integers(0, 40), max_size=8))
def test_stream_never_loses_bytes(native, data, cuts):
    bounds = sorted({0, len(data), *[min(c, len(data)) for c in cuts]})
    chunks = [data[a:b] for a, b in zip(bounds, bounds[1:])]
    out = stream(native, chunks)
    assert b"".join(out) == data
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return
    for chunk in out:
        chunk.decode("utf-8")  # valid input comes out in whole characters


# ---- the sources build for the guest ----------------------------------------------------


@pytest.mark.parametrize("source", gn.SOURCES)
def test_compiles_for_wasm32_without_warnings(source, tmp_path):
    pytest.importorskip("ziglang")
    cmd = [sys.executable, "-m", "ziglang", "cc", "-target", "wasm32-wasi", "-O2", "-std=c11",
           "-Wall", "-Wextra", "-Werror", "-I", str(gn.GUEST), "-c", str(gn.GUEST / source),
           "-o", str(tmp_path / "out.o")]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


# ---- the same code built for wasm32, run under Wasmtime ---------------------------------


class WasmGuestCode:
    """guest/{tokenizer*,unicode,sampler}.c + tests/c/tokenizer_wasm_shim.c, built as the guest is."""

    def __init__(self, out_dir: Path):
        wasmtime = require("wasmtime")
        pytest.importorskip("ziglang")
        path = out_dir / "tokenizer.wasm"
        cmd = [sys.executable, "-m", "ziglang", "cc", "-target", "wasm32-wasi", "-mexec-model=reactor",
               "-O2", "-msimd128", "-std=c11", "-Wall", "-Wextra", "-Werror", "-I", str(gn.GUEST),
               *[str(gn.GUEST / s) for s in gn.SOURCES], str(gn.ROOT / "tests" / "c" / "tokenizer_wasm_shim.c"),
               "-o", str(path)]
        subprocess.run(cmd, check=True)
        engine = wasmtime.Engine()
        module = wasmtime.Module.from_file(engine, str(path))
        self.imports = [(imp.module, imp.name) for imp in module.imports]
        self.store = wasmtime.Store(engine)
        instance = wasmtime.Linker(engine).instantiate(self.store, module)
        self.ex = instance.exports(self.store)
        if "_initialize" in self.ex:
            self.ex["_initialize"](self.store)
        self.memory = self.ex["memory"]

    def call(self, name: str, *args):
        return self.ex[name](self.store, *args)

    def put(self, data: bytes) -> int:
        ptr = self.call("shim_alloc", len(data))
        assert ptr
        self.memory.write(self.store, data, ptr)
        return ptr

    def put_at(self, ptr: int, data: bytes) -> None:
        self.memory.write(self.store, data, ptr)

    def get(self, ptr: int, n: int) -> bytes:
        return bytes(self.memory.read(self.store, ptr, ptr + n))

    def memory_bytes(self) -> int:
        return self.memory.data_len(self.store)

    def tokenizer(self, md) -> int:
        """A tokenizer in wasm memory from GGUF metadata (the arrays written as GGUF stores them)."""
        def strings(key):
            if key not in md:
                return 0, 0, 0
            arr = md[key]
            blob = gn.gguf_strings([arr.raw(i) for i in range(len(arr))])
            return self.put(blob), len(blob), len(arr)

        def numbers(key):
            if key not in md:
                return 0, 0, 0
            arr = np.ascontiguousarray(md[key])
            return self.put(arr.tobytes()), len(arr), gn.TOK_GGUF_F32 if arr.dtype == np.float32 else gn.TOK_GGUF_I32

        v, _ = gn.vocab_from_metadata(md)
        pre = md.get("tokenizer.ggml.pre", "").encode()
        tokens, merges, scores = strings("tokenizer.ggml.tokens"), strings("tokenizer.ggml.merges"), numbers("tokenizer.ggml.scores")
        types = numbers("tokenizer.ggml.token_type")
        ids = self.put(np.array([getattr(v, f) for f in gn._ID_FIELDS], dtype=np.int64).tobytes())
        err = self.put(b"\0" * 4)
        before = self.memory_bytes()
        handle = self.call("shim_tokenizer_new", v.kind, self.put(pre) if pre else 0, len(pre), *tokens, *merges,
                           *scores, types[0], types[1], ids, v.add_bos, v.add_eos, v.add_space_prefix, err)
        assert handle, int.from_bytes(self.get(err, 4), "little", signed=True)
        self.index_bytes = self.memory_bytes() - before
        return handle

    def encode(self, handle: int, text: bytes, add_special: bool, parse_special: bool) -> list[int]:
        cap = len(text) * 3 + 8
        src, out, n = self.put(text or b"\0"), self.call("shim_alloc", cap * 4), self.call("shim_alloc", 4)
        rc = self.call("shim_encode", handle, src, len(text), int(add_special), int(parse_special), out, cap, n)
        assert rc == 0, rc
        count = int.from_bytes(self.get(n, 4), "little")
        ids = np.frombuffer(self.get(out, 4 * count), dtype=np.int32).tolist()
        for p in (src, out, n):
            self.call("shim_free", p)
        return ids

    def piece(self, handle: int, token: int, special: bool) -> bytes:
        buf = self.call("shim_alloc", 256)
        n = self.call("shim_piece", handle, token, int(special), buf, 256)
        out = self.get(buf, n)
        self.call("shim_free", buf)
        return out


@pytest.fixture(scope="module")
def wasm(tmp_path_factory):
    return WasmGuestCode(tmp_path_factory.mktemp("wasm"))


def test_wasm_build_tokenizes_like_llama_cpp(wasm, model):
    """Built for wasm32 like the guest: no imports, the same ids and pieces as llama.cpp, and
    compact indexes (Gemma 3's 262,144 tokens: 3.3 MiB, 4.1 MiB of wasm memory once the guest's
    allocator has rounded the blocks up, besides the GGUF arrays themselves)."""
    from realm.reader import open_gguf

    tok, ref = model
    assert wasm.imports == []
    path = Path(ref.llm.model_path)
    with open_gguf(path) as g:
        handle = wasm.tokenizer(g.metadata)
    assert wasm.index_bytes <= 4.5 * 2**20
    for text in CORPUS:
        raw = text.encode()
        for add_special, parse_special in [(True, True), (False, False)]:
            assert wasm.encode(handle, raw, add_special, parse_special) == ref.tokenize(raw, add_special, parse_special)
    for raw in INVALID_UTF8:
        assert wasm.encode(handle, raw, False, False) == ref.tokenize(raw, False, False)
    for token in range(0, ref.n_vocab, 61):
        assert wasm.piece(handle, token, True) == ref.piece(token, True)


def test_wasm_build_samples_like_native(wasm, native):
    """The same seed draws the same tokens in the wasm32 build as natively."""
    logits = (np.random.default_rng(5).standard_normal(3000) * 2).astype(np.float32)
    for temperature, top_k, top_p, min_p in [(0.8, 40, 0.95, 0.05), (1.0, 0, 1.0, 0.0), (1.1, 0, 0.9, 0.0)]:
        seed = 0x1234_5678_9ABC_DEF0
        n = 64
        src, out = wasm.put(logits.tobytes()), wasm.call("shim_alloc", 4 * n)
        assert wasm.call("shim_sample", temperature, top_k, top_p, min_p, seed & 0xFFFFFFFF, seed >> 32,
                         src, len(logits), out, n) == 0
        in_wasm = np.frombuffer(wasm.get(out, 4 * n), dtype=np.int32).tolist()
        s = gn.Sampler(native, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed)
        assert in_wasm == [s.sample(logits) for _ in range(n)]


_logit = st.one_of(st.sampled_from([0.0, -0.0, 1.0, -1.0, 3.5, float("inf"), float("-inf"), float("nan")]),
                   st.floats(-4, 4, width=32))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(logits=st.lists(_logit, min_size=1, max_size=200))
def test_wasm_greedy_is_the_first_argmax(wasm, logits):
    """The guest's greedy pick (four accumulators of 4 lanes in wasm, then 4 lanes at a time
    for its index): the first highest logit -- ties, -0 and +0, infinities, NaNs (which never
    win, unless the first logit is one) -- as a plain loop, for lengths around every step."""
    x = np.array(logits, dtype=np.float32)
    best = 0
    for i in range(1, len(x)):
        if x[i] > x[best]:
            best = i
    src, out = wasm.put(x.tobytes()), wasm.call("shim_alloc", 4)
    assert wasm.call("shim_sample", 0.0, 0, 1.0, 0.0, 1, 0, src, len(x), out, 1) == 0
    assert int.from_bytes(wasm.get(out, 4), "little", signed=True) == best
    wasm.call("shim_free", src)
    wasm.call("shim_free", out)


_lane_float = st.one_of(st.floats(width=32), st.floats(-100, 1, width=32),
                        st.sampled_from([0.0, -0.0, -87.33654, -87.33655, -88.0, float("nan")]))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(_lane_float, min_size=1, max_size=70), div=st.sampled_from([1.0, 0.7, 2.0, 1e-3]),
       sub=st.floats(-10, 10, width=32), threshold=st.sampled_from([float("-inf"), -1.0, 0.5]),
       start=st.integers(0, 69))
def test_wasm_softmax_lanes_equal_the_scalar_reference(wasm, native, values, div, sub, threshold, start):
    """guest/softmax.c in wasm SIMD lanes gives its scalar reference's bits, in wasm and
    natively, for any values (NaN, infinities, zeros, around FLT_MIN) and lengths around
    every step of 4 and 16: the weights and their count, the maximum, the next value above
    a bound."""
    x = np.array(values, dtype=np.float32)
    n = len(x)
    src, out, total = wasm.put(x.tobytes()), wasm.call("shim_alloc", 4 * n), wasm.put(bytes(12))
    weights, counts, sums = [], [], []
    for simd in (1, 0):
        wasm.put_at(total, np.float64(0.25).tobytes() + np.float32(0.5).tobytes())  # added to what is there
        counts.append(wasm.call("shim_softmax_weights", simd, out, src, n, div, sub, threshold, total, total + 8))
        weights.append(wasm.get(out, 4 * n))
        sums.append(wasm.get(total, 12))
    f = native.lib.softmax_weights_ref
    f.restype = C.c_uint32
    f.argtypes = [C.c_void_p, C.c_void_p, C.c_uint32, C.c_float, C.c_float, C.c_float, C.POINTER(C.c_double),
                  C.POINTER(C.c_float)]
    w, native_sum, native_fsum = np.empty_like(x), C.c_double(0.25), C.c_float(0.5)
    counts.append(f(w.ctypes.data, x.ctypes.data, n, div, sub, threshold, C.byref(native_sum), C.byref(native_fsum)))
    weights.append(w.tobytes())
    sums.append(np.float64(native_sum.value).tobytes() + np.float32(native_fsum.value).tobytes())
    assert weights[0] == weights[1] == weights[2] and counts[0] == counts[1] == counts[2]
    assert sums[0] == sums[1] == sums[2]
    maxima = [np.float32(wasm.call("shim_softmax_max", simd, src, n)).tobytes() for simd in (1, 0)]
    assert maxima[0] == maxima[1]
    ordered = np.unique(x[~np.isnan(x)])  # a bound with just one value above it, too
    for bound in {float(x[start % n]), *ordered[-2:-1].tolist()}:
        for from_ in range(n + 1):
            assert (wasm.call("shim_softmax_next_above", 1, src, from_, n, bound)
                    == wasm.call("shim_softmax_next_above", 0, src, from_, n, bound))
    for ptr in (src, out, total):
        wasm.call("shim_free", ptr)


def test_wasm_softmax_sums_in_order(wasm):
    """The SIMD weights' sums (double and float) are the sums in token order, lane after lane
    (of many different weights, where another order would round differently)."""
    x = (np.random.default_rng(3).standard_normal(4099) * 5).astype(np.float32)
    n = len(x)
    src, out, total = wasm.put(x.tobytes()), wasm.call("shim_alloc", 4 * n), wasm.put(bytes(12))
    sums, fsums = [], []
    for simd in (1, 0):
        wasm.put_at(total, bytes(12))
        wasm.call("shim_softmax_weights", simd, out, src, n, 1.0, float(x.max()), float("-inf"), total, total + 8)
        sums.append(np.frombuffer(wasm.get(total, 8), np.float64)[0])
        fsums.append(np.frombuffer(wasm.get(total + 8, 4), np.float32)[0])
    in_order, f_in_order = 0.0, np.float32(0.0)
    for v in np.frombuffer(wasm.get(out, 4 * n), np.float32):
        in_order += float(v)
        f_in_order = np.float32(f_in_order + v)
    assert sums[0] == sums[1] == in_order
    assert fsums[0] == fsums[1] == f_in_order
    for simd in (1, 0):  # with one sum only (the other NULL): the same sums
        wasm.put_at(total, bytes(12))
        wasm.call("shim_softmax_weights", simd, out, src, n, 1.0, float(x.max()), float("-inf"), total, 0)
        assert np.frombuffer(wasm.get(total, 8), np.float64)[0] == in_order
        wasm.call("shim_softmax_weights", simd, out, src, n, 1.0, float(x.max()), float("-inf"), 0, total + 8)
        assert np.frombuffer(wasm.get(total + 8, 4), np.float32)[0] == f_in_order
    for ptr in (src, out, total):
        wasm.call("shim_free", ptr)


def test_repeated_merge_keeps_its_first_rank(native):
    """A merge listed twice keeps its first rank, as llama.cpp's bpe_ranks.emplace does: with
    "b c" ranked before "a b", "abc" becomes a + bc (with "b c" ranked last it would be ab + c)."""
    tokens = [b"a", b"b", b"c", b"ab", b"bc"]
    for merges, want in (([b"b c", b"a b", b"b c"], [b"a", b"bc"]), ([b"a b", b"b c", b"a b"], [b"ab", b"c"])):
        v, keep = make_vocab(tokens, kind=gn.TOK_KIND_BPE, merges=merges, pre=b"gpt-2")
        tok = gn.Tokenizer(native, v, keep)
        assert tok.error == 0
        assert tok.encode(b"abc") == [tokens.index(t) for t in want]
