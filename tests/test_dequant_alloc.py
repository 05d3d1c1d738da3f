"""dequantize without `out=`: large results on huge pages of their own (realm/fresh.py), equal to
the `out=` path and ordinary arrays in every other way; small ones from np.empty; a result's
mapping recycled once nothing can reach it, within the pool's bounds."""

from __future__ import annotations

import gc
import mmap
import pickle
import threading
import weakref

import numpy as np
import pytest

import realm
from realm import GGMLType, fresh
from conftest import assert_same_bits, run_threads

needs_thp = pytest.mark.skipif(not fresh.huge_pages_available(), reason="no transparent huge pages here")
MIB = 1 << 20


@pytest.fixture(autouse=True)
def empty_pool():
    """Each test starts and ends with an empty pool (what another test dropped is not reused)."""
    gc.collect()
    fresh.release()
    yield
    gc.collect()
    fresh.release()


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
    assert ref() is not None and fresh.pooled_bytes() == fresh.HUGE_PAGE  # kept for reuse
    assert fresh.release() == fresh.HUGE_PAGE and fresh.pooled_bytes() == 0
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


# The result pool.


def poison(arr: np.ndarray) -> None:
    """Fill arr with a NaN pattern no kernel writes, so a result left partly unwritten shows."""
    arr.reshape(-1).view(np.uint32)[:] = 0x7FC0DEAD


@needs_thp
@pytest.mark.parametrize("qtype", [GGMLType.Q8_0, GGMLType.Q4_K, GGMLType.F16], ids=lambda t: t.name)
def test_dropped_result_is_reused_and_fully_overwritten(qtype):
    n = fresh.HUGE_MIN_BYTES // 4 + MIB  # over the threshold
    raw = random_blocks(qtype, n)
    expected = realm.dequantize(raw, qtype, out=np.empty((4, n // 4), dtype=np.float32))
    first = realm.dequantize(raw, qtype)
    address, ref = first.ctypes.data, weakref.ref(mapping_of(first))
    poison(first)
    del first
    for shape in (None, (2, 2, n // 4), (n,)):
        got = realm.dequantize(raw, qtype, shape=shape)
        assert got.ctypes.data == address and mapping_of(got) is ref()  # the same mapping, no new faults
        assert_same_bits(got.reshape(expected.shape), expected)
        assert_ordinary(got, shape or expected.shape)
        poison(got)
        del got


@needs_thp
def test_reuse_takes_whole_threads_results(monkeypatch):
    raw = random_blocks(GGMLType.Q4_0, fresh.HUGE_MIN_BYTES // 4 + MIB)
    expected = realm.dequantize(raw, GGMLType.Q4_0, out=np.empty((4, raw.shape[1] // 18 * 32), dtype=np.float32))
    for threads in (None, 1, 2, 3):
        got = realm.dequantize(raw, GGMLType.Q4_0, threads=threads)
        assert_same_bits(got, expected)
        poison(got)
        del got
    assert fresh.pooled_bytes() == -(-expected.nbytes // fresh.HUGE_PAGE) * fresh.HUGE_PAGE  # one mapping, reused


@needs_thp
@pytest.mark.parametrize("keep", ["view", "slice", "base", "memoryview", "asarray", "frombuffer", "mmap"])
def test_a_live_reference_keeps_the_mapping_out_of_reuse(keep, monkeypatch):
    monkeypatch.setattr(fresh, "HUGE_MIN_BYTES", 4096)
    qtype = GGMLType.Q8_0
    raw = random_blocks(qtype, 4 * 4096)
    expected = realm.dequantize(raw, qtype, out=np.empty((4, 4096), dtype=np.float32))
    got = realm.dequantize(raw, qtype)
    address = got.ctypes.data
    held = {"view": lambda a: a.T, "slice": lambda a: a[2:, ::3], "base": lambda a: a.base.base,
            "memoryview": memoryview, "asarray": lambda a: np.asarray(memoryview(a)),
            "frombuffer": lambda a: np.frombuffer(a, dtype=np.uint8), "mmap": mapping_of}[keep](got)
    snapshot = (lambda h: h[:]) if keep == "mmap" else (lambda h: np.array(h, copy=True).tobytes())
    before = snapshot(held)
    del got
    gc.collect()
    other = realm.dequantize(raw, qtype)  # the held one is not free: a fresh mapping
    assert_same_bits(other, expected)
    other_address = other.ctypes.data
    assert other_address != address
    other[:] = -1.0
    assert snapshot(held) == before  # what is held was not written over
    del other, held
    gc.collect()
    again = realm.dequantize(raw, qtype)  # both are free now
    assert again.ctypes.data in (address, other_address)
    assert fresh.pooled_bytes() == fresh.HUGE_PAGE  # the other one waits in the pool
    assert_same_bits(again, expected)


@needs_thp
def test_pickle_and_copy_of_a_recycled_result_do_not_share_it(monkeypatch):
    monkeypatch.setattr(fresh, "HUGE_MIN_BYTES", 4096)
    raw = random_blocks(GGMLType.F16, 4 * 4096)
    got = realm.dequantize(raw, GGMLType.F16)
    blob, copy = pickle.dumps(got), got.copy()
    address = got.ctypes.data
    del got
    again = realm.dequantize(raw, GGMLType.F16)
    assert again.ctypes.data == address
    poison(again)
    assert_same_bits(pickle.loads(blob), copy)


@needs_thp
def test_a_mapping_serves_only_sizes_it_fits(monkeypatch):
    monkeypatch.setattr(fresh, "HUGE_MIN_BYTES", 0)

    def address_after(first_mib: int, then_mib: float) -> bool:
        fresh.release()
        a = fresh.empty_float32((first_mib * MIB // 4,))
        address = a.ctypes.data
        del a
        b = fresh.empty_float32((int(then_mib * MIB) // 4,))
        return b.ctypes.data == address

    assert address_after(40, 32)  # 8 MiB over: a quarter
    assert not address_after(42, 32)  # 10 MiB over
    assert address_after(4, 2)  # 2 MiB over a small one
    assert not address_after(6, 2)
    assert address_after(32, 31.5)  # both round up to 32 MiB of huge pages
    assert not address_after(32, 34)  # too small
    assert address_after(2, 0.001)


@needs_thp
def test_the_pool_keeps_the_most_recently_returned_within_its_bounds(monkeypatch):
    monkeypatch.setattr(fresh, "HUGE_MIN_BYTES", 0)
    monkeypatch.setattr(fresh, "POOL_MAX_ENTRIES", 3)
    monkeypatch.setattr(fresh, "POOL_MAX_BYTES", 20 * MIB)
    arrays = [fresh.empty_float32((mib * MIB // 4,)) for mib in (2, 4, 6, 8)]
    refs = [weakref.ref(mapping_of(a)) for a in arrays]
    del arrays[0]  # returned in the order 2, 4, 6, 8 MiB
    assert fresh.pooled_bytes() == 2 * MIB
    del arrays[0]
    del arrays[0]
    assert fresh.pooled_bytes() == 12 * MIB
    del arrays[0]  # four entries are one too many: the 2 MiB one, returned first, goes
    assert fresh.pooled_bytes() == 18 * MIB and refs[0]() is None
    big = fresh.empty_float32((8 * MIB // 4,))  # the 8 MiB one, reused
    assert mapping_of(big) is refs[3]()
    assert fresh.pooled_bytes() == 10 * MIB
    other = fresh.empty_float32((12 * MIB // 4,))  # nothing fits: fresh
    del big, other  # 10 + 8 + 12 MiB is over 20 MiB: the 4 MiB, then the 6 MiB one go
    assert fresh.pooled_bytes() == 20 * MIB and refs[1]() is None and refs[2]() is None
    assert refs[3]() is not None
    huge = fresh.empty_float32((22 * MIB // 4,))
    del huge  # larger than the whole pool: unmapped as it is returned
    assert fresh.pooled_bytes() <= 20 * MIB
    assert fresh.release() == 20 * MIB and fresh.pooled_bytes() == 0 and refs[3]() is None


@needs_thp
def test_no_pool_when_its_bounds_are_zero(monkeypatch):
    monkeypatch.setattr(fresh, "HUGE_MIN_BYTES", 0)
    monkeypatch.setattr(fresh, "POOL_MAX_BYTES", 0)
    a = fresh.empty_float32((MIB,))
    ref = weakref.ref(mapping_of(a))
    del a
    assert fresh.pooled_bytes() == 0 and ref() is None


def test_release_is_exported_and_harmless_when_empty():
    assert realm.fresh.release() == 0 and realm.fresh.pooled_bytes() == 0
    assert 0 < fresh.POOL_MAX_BYTES <= 256 * MIB and fresh.POOL_MAX_ENTRIES >= 1


@needs_thp
def test_threads_get_distinct_live_buffers(monkeypatch):
    """Threads dequantize at once, keeping some results and dropping others: every kept result
    stays its own (no other thread's result is made on it) and every one equals out='s."""
    monkeypatch.setattr(fresh, "HUGE_MIN_BYTES", 4096)
    monkeypatch.setattr(fresh, "POOL_MAX_ENTRIES", 3)  # fewer mappings than threads: they contend
    qtypes = [GGMLType.Q8_0, GGMLType.Q4_0, GGMLType.F16]
    sizes = [4096, 10 * 4096, 40 * 4096]  # 4 rows: 64 KiB, 640 KiB, 2.5 MiB; mappings of 2 and 4 MiB
    cases = []
    for q in qtypes:
        for n in sizes:
            raw = random_blocks(q, 4 * n)
            cases.append((q, raw, realm.dequantize(raw, q, out=np.empty((4, n), dtype=np.float32))))
    n_threads, rounds = 6, 40
    barrier = threading.Barrier(n_threads)
    live_ranges: list[tuple[int, int, int]] = []
    addresses: set[int] = set()
    lock = threading.Lock()

    def work(tid: int):
        rng = np.random.default_rng(tid)
        kept = []
        barrier.wait()
        for r in range(rounds):
            q, raw, expected = cases[rng.integers(len(cases))]
            got = realm.dequantize(raw, q, threads=int(rng.integers(1, 3)))
            assert_same_bits(got, expected)
            with lock:
                addresses.add(got.ctypes.data)
            mark = np.float32(tid * 1000 + r)
            got.reshape(-1)[:] = mark
            if rng.random() < 0.3:
                kept.append((got, mark))
            for arr, m in kept:  # nobody else wrote into what this thread keeps
                assert (arr.reshape(-1)[[0, -1]] == m).all()
            del got
            if len(kept) > 3:
                kept.pop(0)
        with lock:
            live_ranges.extend((a.ctypes.data, a.ctypes.data + a.nbytes, tid) for a, _ in kept)
        for arr, m in kept:
            assert (arr == m).all()
        barrier.wait()  # every thread's kept arrays are still alive while the ranges are compared
        return kept

    results = run_threads([lambda i=i: work(i) for i in range(n_threads)])
    spans = sorted(live_ranges)
    for (s0, e0, _), (s1, e1, _) in zip(spans, spans[1:]):
        assert e0 <= s1, "two live results overlap"
    assert sum(len(k) for k in results) == len(spans)
    assert len(addresses) < n_threads * rounds / 4  # mappings were reused
    del results
    gc.collect()
    assert fresh.pooled_bytes() <= fresh.POOL_MAX_BYTES
