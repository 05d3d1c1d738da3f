"""realm's GGUF reader against gguf-py's GGUFReader (the reference) and against
the values written, on the two PyPI models and on generated files."""

import errno
import mmap
import os
import struct
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import require
from gguf_helpers import (
    INT_RANGES, NUMPY_DTYPES, Arr, RawTensor, assert_matches_gguf_py, build_gguf, flatten,
    tensor_bytes,
)
import realm
from realm.errors import FileAccessError, GGUFError
from realm.quants import GGMLType
from realm.reader import TYPE_GEOMETRY, GGUFFile, GGUFValueType as VT, StringArray, open_gguf

gguf = require("gguf")

SCALAR_TYPES = [t for t in VT if t not in (VT.STRING, VT.ARRAY)]


# -- tables ---------------------------------------------------------------------------

def test_type_geometry_matches_gguf_py():
    assert set(TYPE_GEOMETRY) == set(GGMLType)
    for t, geometry in TYPE_GEOMETRY.items():
        assert geometry == gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(int(t))], t.name
    for t in realm.SUPPORTED_TYPES:
        info = realm.quant_info(t)
        assert (info.block_size, info.type_size) == TYPE_GEOMETRY[t]


def test_value_types_match_gguf_py():
    assert {t.name: int(t) for t in VT} == {t.name: int(t) for t in gguf.GGUFValueType}


# -- the real models -------------------------------------------------------------------

@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def real_model(request):
    path = request.getfixturevalue(f"{request.param}_path")
    if request.param == "smollm2":
        return path, request.getfixturevalue("smollm2_reference")
    return path, gguf.GGUFReader(path)  # gguf-py takes ~10 s here


def test_real_models_match_gguf_py(real_model):
    path, reference = real_model
    with open_gguf(path) as f:
        assert_matches_gguf_py(f, path, reference)
        assert f.header == Path(path).read_bytes()[: f.data_offset]


def test_real_model_vocabularies(smollm2_path, gemma3_path):
    with open_gguf(gemma3_path) as g:
        tokens = g.metadata["tokenizer.ggml.tokens"]
        assert isinstance(tokens, StringArray) and len(tokens) == 262144
        assert g.metadata["tokenizer.ggml.scores"].shape == (262144,)
        assert g.metadata["general.architecture"] == "gemma3"
    with open_gguf(smollm2_path) as s:
        assert len(s.metadata["tokenizer.ggml.tokens"]) == 49152
        assert s.metadata["llama.block_count"] == 30
        assert s.metadata["llama.embedding_length"] == 576


# -- files written by gguf.GGUFWriter ---------------------------------------------------

def _scalar_strategy(vtype):
    if vtype in INT_RANGES:
        return st.integers(*INT_RANGES[vtype])
    if vtype == VT.BOOL:
        return st.booleans()
    if vtype == VT.FLOAT32:
        return st.floats(width=32, allow_nan=False)
    if vtype == VT.FLOAT64:
        return st.floats(allow_nan=False)
    return st.text(max_size=20)  # STRING


ELEMENT_TYPES = [*SCALAR_TYPES, VT.STRING]
keys = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=24)


@st.composite
def writer_values(draw):
    """(vtype, sub_type, value) the writer accepts: any scalar, a non-empty array of any
    element type, or a nested array (whose inner types the writer infers)."""
    kind = draw(st.sampled_from(["scalar", "array", "nested"]))
    if kind == "scalar":
        vtype = draw(st.sampled_from(ELEMENT_TYPES))
        value = draw(_scalar_strategy(vtype))
        if vtype == VT.STRING and not value:
            value = "x"  # the writer silently drops empty strings
        return vtype, None, value
    if kind == "array":
        etype = draw(st.sampled_from(ELEMENT_TYPES))
        return VT.ARRAY, etype, draw(st.lists(_scalar_strategy(etype), min_size=1, max_size=12))
    inner = draw(st.sampled_from([st.integers(-2**31, 2**31 - 1), st.floats(width=32, allow_nan=False),
                                  st.booleans(), st.text(max_size=8)]))
    return VT.ARRAY, VT.ARRAY, draw(st.lists(st.lists(inner, min_size=1, max_size=5), min_size=1, max_size=4))


@st.composite
def writer_tensors(draw):
    """(name, type, numpy shape) for up to 40 tensors of any ggml type."""
    n = draw(st.integers(0, 40))
    names = draw(st.lists(st.text("abcdefghij.0123456789_", min_size=1, max_size=16),
                          min_size=n, max_size=n, unique=True))
    out = []
    for name in names:
        ttype = draw(st.sampled_from(sorted(TYPE_GEOMETRY)))
        block = TYPE_GEOMETRY[ttype][0]
        outer = draw(st.lists(st.integers(1, 3), max_size=3))
        row = block * draw(st.integers(1, 3))
        out.append((name, ttype, (*outer, row)))
    return out


def _expected_value(vtype, sub_type, value):
    if vtype == VT.FLOAT32:
        return struct.unpack("<f", struct.pack("<f", value))[0]
    if vtype == VT.ARRAY and sub_type == VT.FLOAT32:
        return [struct.unpack("<f", struct.pack("<f", v))[0] for v in value]
    if vtype == VT.ARRAY and sub_type == VT.ARRAY:
        return [_expected_value(VT.ARRAY, gguf.GGUFValueType.get_type(inner[0]), inner) for inner in value]
    return value


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kvs=st.dictionaries(keys, writer_values(), max_size=12), tensors=writer_tensors(),
       alignment=st.sampled_from([None, 1, 2, 4, 8, 16, 64, 256]), seed=st.integers(0, 2**32 - 1))
def test_writer_files_match_gguf_py(kvs, tensors, alignment, seed):
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.gguf"
        w = gguf.GGUFWriter(str(path), "testarch")
        if alignment is not None:
            w.add_custom_alignment(alignment)
        kvs = {k: v for k, v in kvs.items() if k not in ("general.architecture", "general.alignment")}
        for key, (vtype, sub_type, value) in kvs.items():
            w.add_key_value(key, value, vtype, sub_type=sub_type)
        raw = {}
        for name, ttype, shape in tensors:
            block, size = TYPE_GEOMETRY[ttype]
            data = rng.integers(0, 256, size=(*shape[:-1], shape[-1] // block * size), dtype=np.uint8)
            raw[name] = data
            w.add_tensor(name, data, raw_shape=data.shape, raw_dtype=gguf.GGMLQuantizationType(int(ttype)))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

        try:
            f = open_gguf(path)
        except GGUFError as exc:  # data a kernel cannot read where it lies: gguf-py's offsets must agree
            assert alignment in (1, 2) and "is not aligned to" in str(exc)
            assert any(realm.quants.can_dequantize(GGMLType(int(t.tensor_type)))
                       and t.data_offset % realm.quant_info(int(t.tensor_type)).align
                       for t in gguf.GGUFReader(path).tensors)
            return
        with f:
            assert_matches_gguf_py(f, path)
            assert f.alignment == (alignment or 32)
            for key, (vtype, sub_type, value) in kvs.items():
                got = f.metadata[key]
                want = _expected_value(vtype, sub_type, value)
                if vtype == VT.ARRAY and sub_type == VT.ARRAY:
                    assert [flatten(g) for g in got] == want
                elif vtype == VT.ARRAY:
                    assert flatten(got) == want
                else:
                    assert got == want
            for name, ttype, shape in tensors:
                info = f.tensors[name]
                assert (info.dtype, info.shape) == (ttype, shape)
                assert info.offset % f.alignment == 0
                assert np.array_equal(f.view(info), raw[name])


# -- files encoded byte by byte (what GGUFWriter cannot write) ---------------------------

@st.composite
def raw_arrays(draw, depth=0):
    """(Arr, expected) of any element type, possibly empty, nested up to depth 3."""
    etype = draw(st.sampled_from(ELEMENT_TYPES + ([VT.ARRAY] if depth < 3 else [])))
    n = draw(st.integers(0, 4))
    if etype == VT.ARRAY:
        subs = [draw(raw_arrays(depth + 1)) for _ in range(n)]
        return Arr(etype, [s[0] for s in subs]), [s[1] for s in subs]
    items = draw(st.lists(_scalar_strategy(etype), min_size=n, max_size=n))
    return Arr(etype, items), _expected_value(VT.ARRAY, etype, items)


@st.composite
def raw_values(draw):
    """(vtype, value, expected) for any value type."""
    vtype = draw(st.sampled_from(ELEMENT_TYPES + [VT.ARRAY]))
    if vtype == VT.ARRAY:
        return (vtype, *draw(raw_arrays()))
    v = draw(_scalar_strategy(vtype))
    return vtype, v, _expected_value(vtype, None, v)


def _as_python(value):
    if isinstance(value, (np.ndarray, StringArray)):
        return value.tolist()
    if isinstance(value, list):
        return [_as_python(v) for v in value]
    return value


def _uniform_chain(a):
    """The type chain shared by every leaf path of a non-empty nested Arr, else None."""
    if not a.items:
        return None
    if a.etype != VT.ARRAY:
        return (a.etype,)
    subs = {_uniform_chain(item) for item in a.items}
    return None if len(subs) != 1 or None in subs else (VT.ARRAY, *subs.pop())


def gguf_py_reads(vtype, value):
    """Whether gguf-py's contents() is a usable reference: it flattens nested arrays by the
    first element's types (a FIXME in gguf-py), so only uniform, non-empty nesting qualifies."""
    return vtype != VT.ARRAY or value.etype != VT.ARRAY or _uniform_chain(value) is not None


@settings(max_examples=60, deadline=None)
@given(kvs=st.dictionaries(keys.filter(lambda k: k != "general.alignment"), raw_values(), max_size=8),
       version=st.sampled_from([2, 3]))
def test_raw_files_every_value_type(kvs, version):
    data, _ = build_gguf([(k, vt, v) for k, (vt, v, _) in kvs.items()], version=version)
    f = GGUFFile.from_buffer(data)
    assert f.version == version
    for key, (vtype, _, expected) in kvs.items():
        assert f.value_types[key][0] == vtype
        assert _as_python(f.metadata[key]) == expected
    with tempfile.TemporaryDirectory() as tmp:  # gguf-py needs a file
        path = Path(tmp) / "raw.gguf"
        path.write_bytes(data)
        ref = gguf.GGUFReader(path)
        for key, (vtype, value, _) in kvs.items():
            if not gguf_py_reads(vtype, value):
                continue
            theirs = ref.fields[key].contents()
            assert (flatten(f.metadata[key]) if vtype == VT.ARRAY else f.metadata[key]) == theirs


def test_empty_arrays_keep_their_element_type():
    kvs = [(f"e.{t.name}", VT.ARRAY, Arr(t, [])) for t in ELEMENT_TYPES]
    f = GGUFFile.from_buffer(build_gguf(kvs)[0])
    for t in SCALAR_TYPES:
        arr = f.metadata[f"e.{t.name}"]
        assert arr.shape == (0,) and arr.dtype == NUMPY_DTYPES[t]
    assert len(f.metadata["e.STRING"]) == 0 and f.metadata["e.STRING"].tolist() == []


def test_arrays_are_read_only_copies():
    data = bytearray(build_gguf([("a", VT.ARRAY, Arr(VT.INT32, [1, 2, 3]))])[0])
    f = GGUFFile.from_buffer(data)
    arr = f.metadata["a"]
    assert not arr.flags.writeable and arr.flags.owndata
    data[:] = bytes(len(data))  # the source changing does not change parsed metadata
    assert arr.tolist() == [1, 2, 3]


def test_string_array_sequence_protocol():
    words = ["", "a", "héllo", "日本語", "x" * 300]
    f = GGUFFile.from_buffer(build_gguf([("w", VT.ARRAY, Arr(VT.STRING, words))])[0])
    sa = f.metadata["w"]
    assert len(sa) == 5 and list(sa) == words and sa.tolist() == words
    assert sa[2] == "héllo" and sa[-1] == "x" * 300 and sa[1:4] == words[1:4]
    assert sa.raw(3) == "日本語".encode()
    assert sa == words and sa == tuple(words) and sa != words[:-1]
    with pytest.raises(IndexError):
        sa[5]
    with pytest.raises(IndexError):
        sa[-6]


def test_non_utf8_strings_round_trip():
    bad = b"\xff\xfeok"
    data, _ = build_gguf([("s", VT.STRING, bad), ("a", VT.ARRAY, Arr(VT.STRING, [bad, b"fine"]))])
    f = GGUFFile.from_buffer(data)
    assert f.metadata["s"].encode("utf-8", "surrogateescape") == bad
    assert f.metadata["a"].raw(0) == bad and f.metadata["a"][1] == "fine"


def test_version_2_reads_like_version_3(tiny_gguf):
    v3 = tiny_gguf.read_bytes()
    v2 = v3[:4] + struct.pack("<I", 2) + v3[8:]
    a, b = GGUFFile.from_buffer(v3), GGUFFile.from_buffer(v2)
    assert b.version == 2
    assert {k: _as_python(v) for k, v in a.metadata.items()} == {k: _as_python(v) for k, v in b.metadata.items()}
    assert a.tensors == b.tensors
    path2 = tiny_gguf.with_name("v2.gguf")
    path2.write_bytes(v2)
    with open_gguf(path2) as f:
        assert_matches_gguf_py(f, path2)


# -- the mapping -------------------------------------------------------------------------

def test_tensor_views_are_zero_copy(tiny_gguf):
    with open_gguf(tiny_gguf) as f:
        infos = list(f.tensors.values())
        views = [f.view(t) for t in infos]
        for t, v in zip(infos, views):
            assert not v.flags.writeable and not v.flags.owndata
            assert v.shape == t.byte_shape
        base = views[0].__array_interface__["data"][0] - infos[0].offset
        for t, v in zip(infos, views):
            assert v.__array_interface__["data"][0] - base == t.offset
        # A write to the file shows through the view: it is the file's pages, not a copy.
        t = infos[-1]
        before = views[-1].reshape(-1)[:4].copy()
        with open(tiny_gguf, "r+b") as raw:
            raw.seek(t.offset)
            raw.write(bytes(~before & 0xFF))
        assert np.array_equal(views[-1].reshape(-1)[:4], ~before & 0xFF)


def test_open_reads_no_tensor_data(tmp_path):
    # 4 GiB of tensor data in a sparse file: opening allocates nothing like it.
    ne = (1 << 20, 1 << 10)  # 1 Gi F32 elements
    nbytes = tensor_bytes(GGMLType.F32, ne)
    data, layout = build_gguf([("general.architecture", VT.STRING, "llama")],
                              [RawTensor("big", ne, GGMLType.F32)])
    path = tmp_path / "sparse.gguf"
    with open(path, "wb") as f:
        f.write(data)
        f.truncate(layout.data_offset + nbytes)
    tracemalloc.start()
    try:
        with open_gguf(path) as f:
            peak = tracemalloc.get_traced_memory()[1]
            assert f.tensors["big"].nbytes == nbytes
            assert f.view("big").shape == (1 << 10, (1 << 20) * 4)
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_header_is_the_bytes_before_tensor_data(tiny_gguf):
    raw = tiny_gguf.read_bytes()
    with open_gguf(tiny_gguf) as f:
        assert f.header == raw[: f.data_offset]
        assert f.tensor_data_size == sum(t.nbytes for t in f.tensors.values())
    g = GGUFFile.from_buffer(raw)
    assert g.header == raw[: g.data_offset] and g.tensors == f.tensors


def test_close_releases_the_mapping(tiny_gguf):
    f = open_gguf(tiny_gguf)
    mm = f._buf
    assert isinstance(mm, mmap.mmap)
    f.close()
    assert f.closed and mm.closed
    with pytest.raises(ValueError, match="closed"):
        f.view("output.weight")


def test_close_with_live_views_keeps_them_valid(tiny_gguf):
    f = open_gguf(tiny_gguf)
    view = f.view("output.weight")
    expected = tiny_gguf.read_bytes()[f.tensors["output.weight"].offset:][: view.size]
    f.close()  # the view still holds the pages: close defers to it
    assert view.reshape(-1).tobytes() == expected


def test_empty_or_missing_files(tmp_path):
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(GGUFError, match="truncated"):
        open_gguf(empty)
    with pytest.raises(FileAccessError, match="cannot open") as err:  # a RealmError and an OSError
        open_gguf(tmp_path / "nope.gguf")
    assert err.value.errno == errno.ENOENT and err.value.filename == str(tmp_path / "nope.gguf")


def test_metadata_only_file(tmp_path):
    data, _ = build_gguf([("general.architecture", VT.STRING, "llama"), ("n", VT.UINT32, 7)])
    path = tmp_path / "meta.gguf"
    path.write_bytes(data)
    with open_gguf(path) as f:
        assert dict(f.metadata) == {"general.architecture": "llama", "n": 7}
        assert len(f.tensors) == 0 and f.tensor_data_size == 0
        assert_matches_gguf_py(f, path)


def test_big_endian_files_are_refused_clearly(tmp_path):
    path = tmp_path / "be.gguf"
    w = gguf.GGUFWriter(str(path), "llama", endianess=gguf.GGUFEndian.BIG)
    w.add_uint32("n", 1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    gguf.GGUFReader(path)  # a valid file: gguf-py reads it
    with pytest.raises(GGUFError, match="big-endian"):
        open_gguf(path)


def test_open_accepts_str_and_pathlike(tiny_gguf):
    for p in (str(tiny_gguf), tiny_gguf, os.fspath(tiny_gguf)):
        with open_gguf(p) as f:
            assert f.path == Path(p)
