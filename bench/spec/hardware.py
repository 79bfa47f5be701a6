"""Hardware targets: what a grid's `hardware` strings mean, and the Ray resources each one asks for.

    hw = Hardware.parse("cpu:4+avx512")    # 4 CPU threads on a node that has the custom resource avx512
    hw.ray_options()                        # {"num_cpus": 4, "resources": {"avx512": 1.0}}

Grammar: `DEVICE[:ARG](+RESOURCE[=AMOUNT])*`
- `cpu` (1 thread) or `cpu:N` (N threads; the Ray task reserves N CPUs, so concurrent stages never share
  cores);
- `cuda` (one GPU of any kind) or `cuda:TYPE` (one GPU of Ray's accelerator type TYPE, e.g. `cuda:H100`);
- `+NAME` or `+NAME=AMOUNT`: a custom Ray resource (amount 1 by default) that the node must offer, e.g. the
  `--resources '{"epyc": 2}'` a node was started with. It pins stages to the nodes that have it.

The whole string is the target's label: it is stored with every result and is part of the job key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

_DEVICE = re.compile(r"^(cpu(:[1-9][0-9]*)?|cuda(:[A-Za-z0-9_.-]+)?)$")
_RESOURCE = re.compile(r"^([A-Za-z_][A-Za-z0-9_.-]*)(=([0-9]+(\.[0-9]+)?))?$")
# Ray's own resource names: a custom `+CPU` would silently double-book what num_cpus already asks for.
_RESERVED = {"CPU", "GPU", "memory", "object_store_memory"}

USAGE = ("write 'cpu', 'cpu:N' (N threads), 'cuda' or 'cuda:<accelerator type>', optionally followed by "
         "custom Ray resources, e.g. 'cpu:2+epyc' or 'cuda+nvlink=2'")


@dataclass(frozen=True)
class Hardware:
    label: str
    device: str  # "cpu" or "cuda"
    arg: str | None  # thread count for cpu, accelerator type for cuda
    # follows from the label, which alone is compared and hashed (a target is a set member and a dict key)
    resources: dict[str, float] = field(default_factory=dict, compare=False)

    def __str__(self) -> str:
        return self.label

    @staticmethod
    def parse(label: str) -> "Hardware":
        """Raises ValueError with the reason when `label` is not a hardware target."""
        if not isinstance(label, str) or not label:
            raise ValueError(f"{label!r} is not a hardware target; {USAGE}")
        head, *extras = label.split("+")
        if not _DEVICE.match(head):
            raise ValueError(f"{label!r} is not a hardware target; {USAGE}")
        device, _, arg = head.partition(":")
        resources: dict[str, float] = {}
        for extra in extras:
            m = _RESOURCE.match(extra)
            if not m:
                raise ValueError(f"{label!r}: '+{extra}' is not a custom resource; write +NAME or +NAME=AMOUNT")
            name, amount = m.group(1), float(m.group(3) or 1)
            if name in _RESERVED or name.startswith(("node:", "accelerator_type:")):
                raise ValueError(f"{label!r}: '{name}' is Ray's own resource; ask for it with the device part "
                                 "('cpu:N', 'cuda', 'cuda:TYPE')")
            if name in resources:
                raise ValueError(f"{label!r}: the resource '{name}' is listed twice")
            if amount <= 0:
                raise ValueError(f"{label!r}: the amount of '{name}' must be positive")
            resources[name] = amount
        return Hardware(label, device, arg or None, resources)

    @property
    def threads(self) -> int:
        """Intra-op threads: N for `cpu:N`, 1 for `cpu`, one host thread for CUDA targets."""
        return int(self.arg) if self.device == "cpu" and self.arg else 1

    def ray_options(self) -> dict[str, Any]:
        """Options for `ray.remote(...).options(...)`: CPUs, GPUs, accelerator type, custom resources."""
        opts: dict[str, Any] = {"num_cpus": self.threads}
        if self.device == "cuda":
            opts["num_gpus"] = 1
            if self.arg:
                opts["accelerator_type"] = self.arg
        if self.resources:
            opts["resources"] = dict(self.resources)
        return opts

    def fits(self, node_resources: dict[str, float]) -> bool:
        """Whether a node offering `node_resources` (as `ray.nodes()` reports them) can ever run this target."""
        opts = self.ray_options()
        if node_resources.get("CPU", 0) < opts["num_cpus"] or node_resources.get("GPU", 0) < opts.get("num_gpus", 0):
            return False
        if "accelerator_type" in opts and f"accelerator_type:{opts['accelerator_type']}" not in node_resources:
            return False
        return all(node_resources.get(name, 0) >= amount for name, amount in self.resources.items())
