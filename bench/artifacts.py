"""Pruned-model artifacts: made once by a prune stage, read by every evaluation and latency stage.

    root = Artifacts("results/artifacts")            # a local folder, or a shared filesystem on a cluster
    root.save(key, model, masks, manifest)           # atomically: a staging folder renamed into place
    root.check(key)                                   # None when sound, else why not (cheap: sizes only)
    root.load_into(model, key)                        # verifies every checksum, then copies the weights in
    root.gc(keep)                                     # removes what no stored stage refers to

An artifact holds only what pruning changed, relative to the model's own files: the keep-mask of every
pruned layer ((out_features, in_features), packed 8 per byte), and the weights of the layers whose kept
weights the method also changed (SparseGPT's updates; in the module's own layout, zeros where the mask
prunes). A layer whose pruned weights are its dense weights times its mask (magnitude, Wanda, random) is
stored as its mask alone: 1 bit per weight. It lives in `ROOT/KEY/`, where KEY is the
prune stage's content key (model contents, method, version and parameters, pattern, calibration, layer
filter, refinement, seed, code version), so two grids or two stores that ask for the same pruned model share
one artifact. `manifest.json` names the files with their sizes and SHA-256 and records how the artifact was
made; it is written last, so a folder without it is incomplete. Readers verify the checksums before use;
a truncated or altered artifact is reported by name and rebuilt by the next submit.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from bench.errors import BenchError

FORMAT = 2  # 2: masks packed 8 per byte, weights only for rewritten layers
FILES = ("weights.safetensors", "masks.safetensors")
DEFAULT_ROOT_NAME = "artifacts"  # beside the store: results/bench.duckdb -> results/artifacts


class ArtifactError(BenchError):
    """An artifact is missing, incomplete or does not match its manifest."""


def default_root(db: str | Path) -> Path:
    """The artifact root for a store when none is given: `SPARSEBENCH_ARTIFACTS`, else beside the store."""
    env = os.environ.get("SPARSEBENCH_ARTIFACTS")
    return Path(env) if env else Path(db).resolve().parent / DEFAULT_ROOT_NAME


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Artifacts:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key

    def manifest(self, key: str) -> dict[str, Any] | None:
        try:
            return json.loads((self.path(key) / "manifest.json").read_text())
        except (OSError, ValueError):
            return None

    # ---- writing (prune stages, in workers) ------------------------------------------------------

    def save(self, key: str, weights: dict[str, Any], masks: dict[str, Any], manifest: dict[str, Any]) -> dict[str, Any]:
        """Write an artifact under `key`; returns its manifest. `masks` maps every pruned layer to its bool
        keep-mask (out, in) and `weights` the rewritten layers to their weights, CPU tensors. Safe against
        concurrent writers of the same key (the last rename wins; both are identical)."""
        import numpy as np
        import torch
        from safetensors.torch import save_file

        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f".staging-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            save_file({k: v.contiguous() for k, v in weights.items()}, str(staging / FILES[0]))
            # masks of GPT-2's Conv1D layers are transposed views: packed from a contiguous copy
            packed = {k: torch.from_numpy(np.ascontiguousarray(np.packbits(v.contiguous().numpy(), axis=-1)))
                      for k, v in masks.items()}
            save_file(packed, str(staging / FILES[1]))
            files = {name: {"bytes": (staging / name).stat().st_size, "sha256": _sha256(staging / name)} for name in FILES}
            manifest = {**manifest, "key": key, "format": FORMAT, "files": files, "layers": sorted(masks),
                        "mask_shapes": {k: list(v.shape) for k, v in masks.items()}, "rewritten": sorted(weights),
                        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            (staging / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True, default=str))
            final = self.path(key)
            if final.exists():  # an unsound leftover (the runner rebuilds only those) or a concurrent twin
                shutil.rmtree(final, ignore_errors=True)
            os.replace(staging, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return manifest

    # ---- checking and reading --------------------------------------------------------------------

    def check(self, key: str, deep: bool = False) -> str | None:
        """None if the artifact is sound, else the reason. Shallow: the manifest and every file's size
        (cheap enough for the driver to run on every artifact it plans to reuse); deep: also SHA-256."""
        folder = self.path(key)
        if not folder.is_dir():
            return f"artifact {key} is missing from {self.root}"
        manifest = self.manifest(key)
        if manifest is None or manifest.get("key") != key or "files" not in manifest:
            return f"artifact {key} has no readable manifest (an interrupted write?)"
        if manifest.get("format") != FORMAT:
            return f"artifact {key} has format {manifest.get('format')}, this sparsebench reads {FORMAT}"
        for name, want in manifest["files"].items():
            f = folder / name
            if not f.is_file():
                return f"artifact {key}: {name} is missing"
            size = f.stat().st_size
            if size != want["bytes"]:
                return f"artifact {key}: {name} has {size} bytes, its manifest says {want['bytes']} (truncated?)"
            if deep and _sha256(f) != want["sha256"]:
                return f"artifact {key}: {name} does not match its SHA-256 in the manifest (altered or corrupt)"
        return None

    def load_into(self, model, key: str) -> dict[str, Any]:
        """Make `model` (the dense model the artifact was made from) the pruned model, in place, after
        verifying every checksum: rewritten layers get their stored weights, every pruned layer its mask
        applied. Returns the manifest."""
        import torch
        from safetensors.torch import load_file

        from bench.prune import weight_view

        problem = self.check(key, deep=True)
        if problem:
            raise ArtifactError(problem + "; submit the grid again to rebuild it")
        weights = load_file(str(self.path(key) / FILES[0]))
        masks = self.masks(key)
        modules = dict(model.named_modules())
        with torch.no_grad():
            for name in sorted(set(weights) | set(masks)):
                module = modules.get(name)
                want = tuple(weights[name].shape) if name in weights else None
                if module is None or (want is not None and tuple(module.weight.shape) != want):
                    raise ArtifactError(f"artifact {key}: layer {name} {want or ''} does not fit this model "
                                        f"({'no such layer' if module is None else tuple(module.weight.shape)})")
                if name in weights:
                    module.weight.copy_(weights[name].to(module.weight.device, module.weight.dtype))
                if name in masks:
                    view = weight_view(module)  # (out, in), as the mask
                    if tuple(view.shape) != tuple(masks[name].shape):
                        raise ArtifactError(f"artifact {key}: the mask of layer {name} {tuple(masks[name].shape)} "
                                            f"does not fit this model ({tuple(view.shape)})")
                    view.masked_fill_(~masks[name].to(view.device), 0)  # +0.0 where pruned, as the method wrote
        return self.manifest(key)

    def masks(self, key: str) -> dict[str, Any]:
        """{layer: bool keep-mask (out, in)}, unpacked."""
        import numpy as np
        import torch
        from safetensors.torch import load_file

        shapes = (self.manifest(key) or {}).get("mask_shapes", {})
        packed = load_file(str(self.path(key) / FILES[1]))
        return {name: torch.from_numpy(np.unpackbits(p.numpy(), axis=-1, count=shapes[name][-1]).astype(bool))
                for name, p in packed.items()}

    # ---- housekeeping (driver) ---------------------------------------------------------------------

    def keys(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def size(self, key: str) -> int:
        return sum(f.stat().st_size for f in self.path(key).rglob("*") if f.is_file())

    def remove(self, key: str) -> None:
        shutil.rmtree(self.path(key), ignore_errors=True)

    def gc(self, keep: set[str], dry_run: bool = False, staging_older_than_s: float = 3600) -> list[tuple[str, int]]:
        """Remove every artifact whose key is not in `keep`, and staging folders left by writers that died
        (older than `staging_older_than_s`). Returns (name, bytes) of what was (or would be) removed."""
        removed = []
        if not self.root.is_dir():
            return removed
        now = time.time()
        for p in sorted(self.root.iterdir()):
            if not p.is_dir():
                continue
            stale = p.name.startswith(".staging-") and now - p.stat().st_mtime > staging_older_than_s
            if (not p.name.startswith(".") and p.name not in keep) or stale:
                removed.append((p.name, sum(f.stat().st_size for f in p.rglob("*") if f.is_file())))
                if not dry_run:
                    shutil.rmtree(p, ignore_errors=True)
        return removed

