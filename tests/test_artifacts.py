"""Pruned-model artifacts on their own: a real pruned model saved, checked, damaged and loaded back."""

import json

import pytest
import torch

from bench.model.artifacts import ArtifactError, Artifacts
from bench.patterns import parse_pattern
from bench.prune.harness import prune_model
from bench.spec.protocols import CalibrationSpec


@pytest.fixture()
def pruned(tiny_model):
    """(dense model, pruned copy, prune report) for magnitude 2:4 on the tiny Llama."""
    from transformers import AutoModelForCausalLM

    from bench.registry import method_registry

    dense = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    report = prune_model(model, method_registry().get("magnitude")(seed=0), parse_pattern("2:4"))
    return dense, model, report


def save(root, key, model, report):
    """As the prune stage saves: every mask, and the weights of the rewritten layers only."""
    modules = dict(model.named_modules())
    weights = {name: modules[name].weight.detach().clone() for name in report.rewritten}
    return Artifacts(root).save(key, weights, report.masks, {"note": "test"})


def test_round_trip_restores_the_pruned_weights_exactly(pruned, tmp_path, tiny_model):
    from transformers import AutoModelForCausalLM

    dense, model, report = pruned
    manifest = save(tmp_path, "k1", model, report)
    assert manifest["key"] == "k1" and manifest["note"] == "test" and len(manifest["layers"]) == len(report.layers)
    assert manifest["rewritten"] == []  # magnitude only zeroes: the masks (1 bit per weight) say it all
    numel = sum(layer["numel"] for layer in report.layers)
    assert manifest["files"]["masks.safetensors"]["bytes"] < numel / 8 + 10_000
    art = Artifacts(tmp_path)
    assert art.check("k1") is None and art.check("k1", deep=True) is None
    fresh = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    art.load_into(fresh, "k1")
    for (name, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), name
    masks = art.masks("k1")
    for name, mask in masks.items():
        w = dict(fresh.named_modules())[name].weight
        assert mask.dtype == torch.bool and not bool(w[~mask].any())  # zeros wherever the mask prunes
    assert json.loads((tmp_path / "k1" / "manifest.json").read_text())["files"]["weights.safetensors"]["bytes"] < 100
    assert not any(p.name.startswith(".staging") for p in tmp_path.iterdir())


def test_a_method_that_updates_kept_weights_stores_them(tiny_model, tmp_path):
    """SparseGPT rewrites the weights it keeps: the artifact stores them, and loading reproduces them."""
    from transformers import AutoModelForCausalLM

    from bench.prune.calibration import calibration_tokens
    from bench.registry import method_registry

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    from transformers import AutoTokenizer

    tokens = calibration_tokens(AutoTokenizer.from_pretrained(tiny_model),
                                CalibrationSpec(samples=4, seq_len=32))
    report = prune_model(model, method_registry().get("sparsegpt")(seed=0), parse_pattern("2:4"), calibration=tokens)
    assert report.rewritten == set(report.masks)
    manifest = save(tmp_path, "sgpt", model, report)
    assert manifest["rewritten"] == sorted(report.masks)
    fresh = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    Artifacts(tmp_path).load_into(fresh, "sgpt")
    for (name, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), name


def test_an_artifact_of_another_format_is_rebuilt_not_misread(pruned, tmp_path):
    dense, model, report = pruned
    save(tmp_path, "old", model, report)
    path = tmp_path / "old" / "manifest.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, "format": 1}))
    assert "has format 1, this sparsebench reads 2" in Artifacts(tmp_path).check("old")


def test_unchanged_layers_stay_out_of_the_artifact(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    from bench.registry import method_registry

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    report = prune_model(model, method_registry().get("dense")(seed=0), parse_pattern("dense"))
    assert report.layers and not report.masks  # the dense method changes nothing: nothing to store
    save(tmp_path, "dense", model, report)
    assert Artifacts(tmp_path).size("dense") < 10_000


def test_truncation_and_alteration_are_detected(pruned, tmp_path):
    dense, model, report = pruned
    save(tmp_path, "k", model, report)
    art = Artifacts(tmp_path)
    masks = tmp_path / "k" / "masks.safetensors"
    data = bytearray(masks.read_bytes())
    data[-1] ^= 0xFF  # same size, different bytes
    masks.write_bytes(bytes(data))
    assert art.check("k") is None  # the cheap check sees sizes only
    assert "does not match its SHA-256" in art.check("k", deep=True)
    with pytest.raises(ArtifactError, match="submit the grid again to rebuild it"):
        art.load_into(dense, "k")
    masks.write_bytes(bytes(data[:1000]))
    assert "has 1000 bytes, its manifest says" in art.check("k")
    (tmp_path / "k" / "manifest.json").unlink()
    assert "no readable manifest" in art.check("k")
    assert "is missing" in art.check("nope")


def test_a_layer_that_does_not_fit_the_model_is_refused(pruned, tmp_path):
    dense, model, report = pruned
    name = next(iter(report.masks))
    art = Artifacts(tmp_path)
    art.save("odd", {name: torch.zeros(3, 3)}, {name: torch.ones(3, 3, dtype=torch.bool)}, {})
    with pytest.raises(ArtifactError, match=f"layer {name} \\(3, 3\\) does not fit this model"):
        art.load_into(dense, "odd")
    art.save("odd-mask", {}, {name: torch.ones(3, 3, dtype=torch.bool)}, {})
    with pytest.raises(ArtifactError, match=f"the mask of layer {name} \\(3, 3\\) does not fit this model"):
        art.load_into(dense, "odd-mask")


def test_gc_removes_only_unreferenced_artifacts_and_stale_staging(pruned, tmp_path):
    import os
    import time

    dense, model, report = pruned
    keep, drop = "a" * 24, "b" * 24
    for key in (keep, drop):
        save(tmp_path, key, model, report)
    stale = tmp_path / f".staging-{'c' * 24}-1-abcdef01"
    stale.mkdir()
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    fresh = tmp_path / f".staging-{'d' * 24}-2-abcdef02"  # a writer may still be busy with this one
    fresh.mkdir()
    # what is not ours stays, however old: a user's folder, a key-named folder holding no artifact files,
    # a hidden folder that is not a staging folder
    foreign = [tmp_path / "notes", tmp_path / ("e" * 24), tmp_path / ".git"]
    for f in foreign:
        f.mkdir()
        (f / "data.txt").write_text("not an artifact")
        os.utime(f, (time.time() - 7200, time.time() - 7200))
    art = Artifacts(tmp_path)
    would = art.gc({keep}, dry_run=True)
    assert sorted(n for n, _ in would) == [stale.name, drop] and (tmp_path / drop).exists()
    removed = art.gc({keep})
    assert sorted(n for n, _ in removed) == [stale.name, drop]
    assert art.keys() == [keep] and fresh.exists() and art.check(keep, deep=True) is None
    assert dict(removed)[drop] > 0
    assert all((f / "data.txt").exists() for f in foreign)
    assert art.foreign() == sorted(f.name for f in foreign)
    assert art.gc(set()) == [(keep, dict(removed)[drop])]  # an empty store: only our artifact goes


def test_an_incomplete_manifest_is_reported_for_rebuild_not_a_key_error(pruned, tmp_path):
    """Valid JSON, checksums fine, but a field the readers index is missing: the artifact is unsound."""
    import json

    dense, model, report = pruned
    key = "f" * 24
    save(tmp_path, key, model, report)
    art = Artifacts(tmp_path)
    path = tmp_path / key / "manifest.json"
    complete = json.loads(path.read_text())
    for field, value in (("mask_shapes", ...), ("files", ...), ("rewritten", ...), ("layers", 3),
                         ("files", {"weights.safetensors": {"bytes": 1}})):
        broken = dict(complete)
        if value is ...:
            del broken[field]
        else:
            broken[field] = value
        path.write_text(json.dumps(broken))
        assert "incomplete manifest" in art.check(key), field
        with pytest.raises(ArtifactError, match="incomplete manifest"):
            art.load_into(dense, key)
    path.write_text(json.dumps([1, 2]))  # JSON, but not an object
    assert "no readable manifest" in art.check(key)


@pytest.mark.parametrize("method", ["magnitude", "sparsegpt"])
def test_gpt2_conv1d_layers_round_trip(method, tmp_path):
    """GPT-2 stores its linear layers transposed (Conv1D): masks are (out, in) views of them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bench.model import zoo
    from bench.prune.calibration import calibration_tokens
    from bench.registry import method_registry

    folder = zoo.builtin_path("tiny-gpt2")
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokens = calibration_tokens(AutoTokenizer.from_pretrained(folder),
                                CalibrationSpec(samples=4, seq_len=32))
    report = prune_model(model, method_registry().get(method)(seed=0), parse_pattern("2:4"), calibration=tokens)
    assert report.masks and (report.rewritten == set(report.masks) if method == "sparsegpt" else not report.rewritten)
    save(tmp_path, "g", model, report)
    fresh = AutoModelForCausalLM.from_pretrained(folder).eval()
    Artifacts(tmp_path).load_into(fresh, "g")
    for (name, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), name
    for name, mask in Artifacts(tmp_path).masks("g").items():
        assert torch.equal(mask, report.masks[name])
