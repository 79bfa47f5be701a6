"""Entry-point registries: discovery without import, loud failures by name."""

from importlib.metadata import EntryPoint

import pytest

from bench.speed.backends import KernelBackend
from bench.method import Method, Param
from bench.registry import PluginError, Registry, kernel_registry, method_registry


def test_builtins_come_through_the_entry_point_group():
    reg = method_registry()
    assert {"dense", "magnitude"} <= set(reg.names())
    assert reg.distribution("magnitude")[0] == "sparsebench"
    assert reg.get("magnitude").name == "magnitude"
    assert "torch-dense" in kernel_registry().names()


def test_unknown_name_suggests_the_closest():
    with pytest.raises(PluginError, match=r"unknown method 'magnitud' \(did you mean 'magnitude'\?\)"):
        method_registry().get("magnitud")


def fresh():
    return Registry("sparsebench.test-nothing", Method, "method")


def test_broken_plugin_names_its_entry_and_others_keep_working():
    reg = fresh()
    reg._discover()
    reg._entries["broken"] = EntryPoint("broken", "no_such_module_xyz:Thing", "sparsebench.test-nothing")

    class Good(Method):
        name = "good"

    reg.register("good", Good)
    with pytest.raises(PluginError, match=r"method 'broken' from .* failed to import \(no_such_module_xyz:Thing\)"):
        reg.get("broken")
    assert reg.get("good") is Good


def test_wrong_base_class_and_wrong_name_are_refused():
    reg = fresh()
    reg.register("notamethod", KernelBackend)
    with pytest.raises(PluginError, match="not a subclass of Method"):
        reg.get("notamethod")

    class Named(Method):
        name = "other"

    reg.register("named", Named)
    with pytest.raises(PluginError, match="its class says name = 'other'"):
        reg.get("named")


def test_param_schema_validation():
    class WithParams(Method):
        name = "with-params"
        params = {"alpha": Param(float, 0.5, "a weight", min=0.0, max=1.0),
                  "mode": Param(str, "a", choices=("a", "b")), "steps": Param(int, 3, min=1)}

    assert WithParams.validate_params({}) == {"alpha": 0.5, "mode": "a", "steps": 3}
    assert WithParams.validate_params({"alpha": 1}) ["alpha"] == 1.0
    for raw, key, fragment in [({"alpha": 1.3}, "alpha", "above the maximum"), ({"mode": "c"}, "mode", "not one of"),
                               ({"steps": True}, "steps", "expected int"), ({"alhpa": 1}, "alhpa", "did you mean 'alpha'")]:
        with pytest.raises(ValueError) as info:
            WithParams.validate_params(raw)
        assert info.value.args[0] == key and fragment in info.value.args[1]
    m = WithParams(alpha=0.25)
    assert m.alpha == 0.25 and m.mode == "a"
