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
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from bench.accuracy.reference import FOLDER as REFERENCES  # the dense references beside the artifacts
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


KEY = re.compile(r"[0-9a-f]{16,64}")  # a prune stage's content key (bench.spec.jobs.content_key)
STAGING = re.compile(r"\.staging-[0-9a-f]{16,64}-[0-9]+-[0-9a-f]{8}")


def _manifest_problem(manifest: dict[str, Any]) -> str | None:
    """What a manifest lacks that reading the artifact needs (None when complete): every reader may then
    index it without a KeyError, and a manifest that lacks something is rebuilt, not misread."""
    files = manifest.get("files")
    if not isinstance(files, dict) or set(files) != set(FILES):
        return f"'files' must list {', '.join(FILES)}"
    for name, want in files.items():
        if not (isinstance(want, dict) and isinstance(want.get("bytes"), int) and isinstance(want.get("sha256"), str)):
            return f"files.{name} needs 'bytes' and 'sha256'"
    layers, shapes = manifest.get("layers"), manifest.get("mask_shapes")
    if not isinstance(layers, list) or not isinstance(shapes, dict) or not isinstance(manifest.get("rewritten"), list):
        return "it needs 'layers', 'mask_shapes' and 'rewritten'"
    for name in layers:
        shape = shapes.get(name)
        if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(n, int) and n > 0 for n in shape)):
            return f"mask_shapes has no (out, in) for layer {name}"
    return None


def is_artifact(folder: Path) -> bool:
    """A folder this project wrote: named by a content key and holding an artifact's files (or what is
    left of them). `gc` removes nothing else, whatever folder it is pointed at."""
    return (folder.is_dir() and KEY.fullmatch(folder.name) is not None
            and any((folder / name).is_file() for name in ("manifest.json", *FILES)))


class Artifacts:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key

    def manifest(self, key: str) -> dict[str, Any] | None:
        try:
            manifest = json.loads((self.path(key) / "manifest.json").read_text())
        except (OSError, ValueError):
            return None
        return manifest if isinstance(manifest, dict) else None

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
        if manifest is None or manifest.get("key") != key:
            return f"artifact {key} has no readable manifest (an interrupted write?)"
        if manifest.get("format") != FORMAT:
            return f"artifact {key} has format {manifest.get('format')}, this sparsebench reads {FORMAT}"
        problem = _manifest_problem(manifest)
        if problem:
            return f"artifact {key} has an incomplete manifest ({problem})"
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

        from bench.model.walk import weight_view

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
        return sorted(p.name for p in self.root.iterdir() if is_artifact(p))

    def size(self, key: str) -> int:
        return sum(f.stat().st_size for f in self.path(key).rglob("*") if f.is_file())

    def remove(self, key: str) -> None:
        shutil.rmtree(self.path(key), ignore_errors=True)

    def gc(self, keep: set[str], dry_run: bool = False, staging_older_than_s: float = 3600) -> list[tuple[str, int]]:
        """Remove every artifact whose key is not in `keep`, and staging folders left by writers that died
        (older than `staging_older_than_s`). Only what this project wrote is touched (`is_artifact`, staging
        names): any other file or folder under the root is left as it is. Returns (name, bytes) of what was
        (or would be) removed."""
        removed = []
        if not self.root.is_dir():
            return removed
        now = time.time()
        for p in sorted(self.root.iterdir()):
            if p.is_symlink() or not p.is_dir():
                continue
            stale = STAGING.fullmatch(p.name) is not None and now - p.stat().st_mtime > staging_older_than_s
            if (is_artifact(p) and p.name not in keep) or stale:
                removed.append((p.name, self.size(p.name)))
                if not dry_run:
                    shutil.rmtree(p, ignore_errors=True)
        return removed

    def foreign(self) -> list[str]:
        """Names under the root that are neither artifacts, staging folders nor the dense references
        (bench.accuracy.reference: a few MB per model and protocol, made again when missing); gc leaves
        all of these but artifacts and stale staging folders alone."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if not is_artifact(p) and not STAGING.fullmatch(p.name) and p.name != REFERENCES)

