"""dequantize without `out=`: large results on huge pages of their own (realm/fresh.py), equal to
the `out=` path and ordinary arrays in every other way; small ones from np.empty."""

from __future__ import annotations

import gc
import mmap
import pickle
import weakref

import numpy as np
import pytest

import realm
from realm import GGMLType, fresh
from conftest import assert_same_bits

needs_thp = pytest.mark.skipif(not fresh.huge_pages_available(), reason="no transparent huge pages here")


def random_blocks(qtype: GGMLType, n_elements: int, rows: int = 4) -> np.ndarray:
    info = realm.quant_info(qtype)
    nbytes = n_elements // info.block_size * info.type_size
    raw = np.random.default_rng(int(qtype)).integers(0, 256, nbytes, dtype=np.uint8)
    return raw.reshape(rows, -1)


def mapping_of(arr: np.ndarray):
    """The mmap.mmap under arr, or None where numpy owns its memory."""
    base = arr
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):  # np.frombuffer's
        base = base.obj
    return base if isinstance(base, mmap.mmap) else None


def assert_ordinary(arr: np.ndarray, shape) -> None:
    assert type(arr) is np.ndarray and arr.dtype == np.float32 and arr.shape == tuple(shape)
    assert arr.flags.c_contiguous and arr.flags.writeable and arr.flags.aligned
    arr.reshape(-1)[[0, -1]] = 1.5  # writable to both ends
    assert arr.reshape(-1)[-1] == 1.5


@pytest.mark.parametrize("qtype", [GGMLType.Q8_0, GGMLType.Q4_K, GGMLType.F16], ids=lambda t: t.name)
def test_large_result_equals_out_path(qtype):
    n = fresh.HUGE_MIN_BYTES // 4 + (1 << 20)  # over the threshold
    raw = random_blocks(qtype, n)
    expected = np.empty(raw.shape[0] * (n // raw.shape[0]), dtype=np.float32).reshape(raw.shape[0], -1)
    realm.dequantize(raw, qtype, out=expected)
    got = realm.dequantize(raw, qtype)
    assert_same_bits(got, expected)
    if fresh.huge_pages_available():
        assert mapping_of(got) is not None and got.ctypes.data % fresh.HUGE_PAGE == 0
    assert_ordinary(got, expected.shape)
    assert not np.shares_memory(got, raw) and not np.shares_memory(got, expected)


@pytest.mark.parametrize("qtype", [GGMLType.Q4_0, GGMLType.Q6_K, GGMLType.BF16], ids=lambda t: t.name)
@pytest.mark.parametrize("huge", [False, True], ids=["np.empty", "mmap"])
def test_small_and_mapped_results_equal_out_path(qtype, huge, monkeypatch):
    if huge:
        if not fresh.huge_pages_available():
            pytest.skip("no transparent huge pages here")
        monkeypatch.setattr(fresh, "HUGE_MIN_BYTES", 4096)  # the mapped path for small arrays too
    raw = random_blocks(qtype, 4 * 256 * 8)
    expected = realm.dequantize(raw, qtype, out=np.empty((4, 256 * 8), dtype=np.float32))
    for shape in (None, (2, 2, 256 * 8), (4 * 256 * 8,)):
        got = realm.dequantize(raw, qtype, shape=shape)
        assert_same_bits(got.reshape(expected.shape), expected)
        assert_ordinary(got, shape or expected.shape)
        assert (mapping_of(got) is not None) == huge
        assert got.flags.owndata == (not huge)


@needs_thp
@pytest.mark.parametrize("n", [1, 1001, 1 << 19, (1 << 19) + 3], ids=lambda n: f"{n}")
def test_mapped_sizes_off_page_boundaries(n, monkeypatch):
    monkeypatch.setattr(fresh, "HUGE_MIN_BYTES", 0)
    raw = random_blocks(GGMLType.F16, 3 * n, rows=3)
    got = realm.dequantize(raw, GGMLType.F16)
    assert mapping_of(got) is not None and got.ctypes.data % fresh.HUGE_PAGE == 0
    assert_same_bits(got, realm.dequantize(raw, GGMLType.F16, out=np.empty((3, n), dtype=np.float32)))
    assert_ordinary(got, (3, n))


def test_below_threshold_is_numpys():
    raw = random_blocks(GGMLType.Q8_0, fresh.HUGE_MIN_BYTES // 4 - 1024)
    got = realm.dequantize(raw, GGMLType.Q8_0)
    assert got.flags.owndata and mapping_of(got) is None


@needs_thp
def test_mapped_result_behaves_as_an_array(monkeypatch):
    monkeypatch.setattr(fresh, "HUGE_MIN_BYTES", 4096)
    raw = random_blocks(GGMLType.Q4_0, 4 * 4096)
    got = realm.dequantize(raw, GGMLType.Q4_0)
    assert mapping_of(got) is not None
    back = pickle.loads(pickle.dumps(got))
    assert back.flags.writeable and mapping_of(back) is None  # plain bytes, as for any array
    assert_same_bits(back, got)
    view = got[1:, ::2]
    assert np.shares_memory(view, got) and not np.shares_memory(got.copy(), got)
    with pytest.raises(BufferError):
        mapping_of(got).close()  # the mapping cannot be closed under a live array


@needs_thp
def test_mapped_memory_is_freed_with_the_array(monkeypatch):
    monkeypatch.setattr(fresh, "HUGE_MIN_BYTES", 4096)
    got = realm.dequantize(random_blocks(GGMLType.Q8_0, 4 * 4096), GGMLType.Q8_0)
    view = got[2:]
    ref = weakref.ref(mapping_of(got))
    del got
    gc.collect()
    assert ref() is not None  # a view keeps it
    del view
    gc.collect()
    assert ref() is None  # unmapped


def test_without_huge_pages_it_is_np_empty(monkeypatch):
    monkeypatch.setattr(fresh, "_available", False)
    monkeypatch.setattr(fresh, "HUGE_MIN_BYTES", 4096)
    got = realm.dequantize(random_blocks(GGMLType.Q4_0, 4 * 4096), GGMLType.Q4_0)
    assert got.flags.owndata and mapping_of(got) is None


def test_probe_reads_the_kernels_setting(tmp_path):
    linux = fresh.sys.platform.startswith("linux") and hasattr(mmap, "MADV_HUGEPAGE")
    setting = tmp_path / "enabled"
    for mode, expected in (("always [madvise] never", True), ("[always] madvise never", True),
                           ("always madvise [never]", False)):
        setting.write_text(mode + "\n")
        assert fresh._probe(str(setting)) is (expected and linux)
    assert fresh._probe(str(tmp_path / "missing")) is False
