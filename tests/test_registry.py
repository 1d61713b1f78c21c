import importlib
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from torch import nn

from lightly_hmlc import registry
from lightly_hmlc.registry import (
    UnknownComponentError,
    create_head,
    create_loss,
    list_components,
    register_head,
    register_loss,
)

BUILTIN_LOSSES = ["a-hmlc", "g-hmlc", "hce", "hmc", "hmce", "supcon"]
BUILTIN_HEADS = ["attention-mask", "gmm-mask"]


@pytest.fixture(autouse=True)
def clean_registry() -> Iterator[None]:
    """Restores the registries after each test, including the discovery state."""
    saved = [(r, dict(r._entries), r._discovered) for r in (registry._LOSSES, registry._HEADS)]
    yield
    for reg, entries, discovered in saved:
        reg._entries = entries
        reg._discovered = discovered


class Scaled(nn.Module):
    def __init__(self, scale: float = 1.0, offset: float = 0.0) -> None:
        super().__init__()
        self.scale = scale
        self.offset = offset


def test_decorator_registers_and_returns_class() -> None:
    @register_loss("test-scaled")
    class MyLoss(Scaled):
        pass

    assert MyLoss.__name__ == "MyLoss"  # the decorator returns the class itself
    loss = create_loss("test-scaled", scale=3.0)
    assert type(loss) is MyLoss
    assert loss.scale == 3.0


def test_head_decorator_and_plain_call() -> None:
    @register_head("test-head")
    class MyHead(Scaled):
        pass

    assert register_head("test-head-2", Scaled) is Scaled
    assert isinstance(create_head("test-head"), MyHead)
    assert create_head("test-head-2", offset=2.0).offset == 2.0
    # Kinds are separate namespaces.
    with pytest.raises(KeyError):
        create_loss("test-head")


def test_function_factory() -> None:
    register_loss("test-fn", lambda scale: Scaled(scale=2 * scale))
    assert create_loss("test-fn", scale=2.0).scale == 4.0


def test_defaults_and_override() -> None:
    register_loss("test-defaults", Scaled, defaults={"scale": 5.0})
    assert create_loss("test-defaults").scale == 5.0
    assert create_loss("test-defaults", scale=1.5).scale == 1.5
    assert create_loss("test-defaults", offset=1.0).scale == 5.0


def test_import_string_is_lazy(monkeypatch: pytest.MonkeyPatch) -> None:
    register_loss("test-lazy", "fake_lazy_module_for_registry:Factory")
    # Nothing is imported at registration; the module only needs to exist on creation.
    module = type(sys)("fake_lazy_module_for_registry")
    module.Factory = Scaled  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_lazy_module_for_registry", module)
    assert isinstance(create_loss("test-lazy", scale=2.0), Scaled)


def test_import_string_that_fails() -> None:
    register_loss("test-missing", "no_such_module_for_registry:Thing")
    with pytest.raises(ImportError, match=r"test-missing.*no_such_module_for_registry"):
        create_loss("test-missing")


def test_bad_import_string_form() -> None:
    with pytest.raises(ValueError, match="module:attr"):
        register_loss("test-bad-string", "torch.nn.MSELoss")


def test_duplicate_name_needs_overwrite() -> None:
    register_loss("test-dup", Scaled)
    with pytest.raises(ValueError, match="already registered.*overwrite=True"):
        register_loss("test-dup", nn.MSELoss)
    with pytest.raises(ValueError, match="already registered"):
        register_loss("supcon", Scaled)
    register_loss("test-dup", nn.MSELoss, overwrite=True)
    assert isinstance(create_loss("test-dup"), nn.MSELoss)


def test_unknown_name_lists_known_and_close_matches() -> None:
    with pytest.raises(UnknownComponentError) as info:
        create_loss("supconn")
    message = str(info.value)
    assert "Did you mean 'supcon'" in message
    for name in BUILTIN_LOSSES:
        assert name in message
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    with pytest.raises(KeyError, match="attention-mask"):
        create_head("gmm_mask")


@pytest.mark.parametrize("name", ["", "bad name", "-dash", "a:b", "loss/x"])
def test_invalid_names(name: str) -> None:
    with pytest.raises(ValueError, match="Invalid loss name"):
        register_loss(name, Scaled)


def test_name_must_come_first() -> None:
    with pytest.raises(TypeError, match=r"register_loss\('name'\)"):
        register_loss(Scaled)  # type: ignore[arg-type]


def test_non_callable_factory() -> None:
    with pytest.raises(TypeError, match="callable"):
        register_loss("test-not-callable", 3)  # type: ignore[arg-type]


def test_factory_must_return_module() -> None:
    register_loss("test-not-module", lambda: 3.0)
    with pytest.raises(TypeError, match="expected an nn.Module"):
        create_loss("test-not-module")


def test_list_components() -> None:
    register_loss("aaa-test", Scaled)
    register_head("zzz-test", Scaled)
    components = list_components()
    assert set(components) == {"losses", "heads"}
    assert components["losses"] == sorted(components["losses"])
    assert components["heads"] == sorted(components["heads"])
    assert set(BUILTIN_LOSSES) | {"aaa-test"} <= set(components["losses"])
    assert set(BUILTIN_HEADS) | {"zzz-test"} <= set(components["heads"])
    assert "zzz-test" not in components["losses"]


def test_registry_module_imports_no_component() -> None:
    # Load registry.py on its own, without the package __init__, in a fresh interpreter.
    code = textwrap.dedent(
        f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("standalone_registry", {registry.__file__!r})
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        assert "hmce" in module.list_components()["losses"]
        loaded = sorted(m for m in sys.modules if m.startswith("lightly_hmlc"))
        assert not loaded, loaded
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# Built-ins: run once the modules exist (written in parallel).
LOSS_BUILTINS = [
    ("supcon", "lightly_hmlc.loss.supcon", "SupConLoss", {}),
    ("hmc", "lightly_hmlc.loss.hmlc", "HMLCLoss", {"loss_type": "hmc"}),
    ("hce", "lightly_hmlc.loss.hmlc", "HMLCLoss", {"loss_type": "hce"}),
    ("hmce", "lightly_hmlc.loss.hmlc", "HMLCLoss", {"loss_type": "hmce"}),
    ("g-hmlc", "lightly_hmlc.loss.masked", "GHMLCLoss", {}),
    ("a-hmlc", "lightly_hmlc.loss.masked", "AHMLCLoss", {}),
]
HEAD_BUILTINS = [
    ("gmm-mask", "lightly_hmlc.models.modules.gmm_mask_head", "GMMFeatureMaskHead"),
    ("attention-mask", "lightly_hmlc.models.modules.attention_mask_head", "AttentionMaskHead"),
]


def _record_calls(monkeypatch: pytest.MonkeyPatch, module_name: str, attr: str) -> list[Any]:
    module = pytest.importorskip(module_name)
    calls: list[Any] = []
    real = getattr(module, attr)

    class Recorder(nn.Module):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__()
            calls.append(kwargs)

    assert isinstance(real, type) and issubclass(real, nn.Module)
    monkeypatch.setattr(module, attr, Recorder)
    return calls


@pytest.mark.parametrize("name, module_name, attr, defaults", LOSS_BUILTINS)
def test_builtin_losses_resolve(
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    module_name: str,
    attr: str,
    defaults: dict[str, Any],
) -> None:
    calls = _record_calls(monkeypatch, module_name, attr)
    # Undo any factory cached by an earlier creation, so the import string is followed now.
    monkeypatch.setattr(registry._LOSSES._entries[name], "target", f"{module_name}:{attr}")
    create_loss(name, extra=1)
    assert calls == [{**defaults, "extra": 1}]


@pytest.mark.parametrize("name, module_name, attr", HEAD_BUILTINS)
def test_builtin_heads_resolve(
    monkeypatch: pytest.MonkeyPatch, name: str, module_name: str, attr: str
) -> None:
    calls = _record_calls(monkeypatch, module_name, attr)
    monkeypatch.setattr(registry._HEADS._entries[name], "target", f"{module_name}:{attr}")
    create_head(name, extra=1)
    assert calls == [{"extra": 1}]


@pytest.mark.parametrize("name", ["supcon", "hmc", "hce", "hmce"])
def test_builtin_losses_create_with_defaults(name: str) -> None:
    module_name = "lightly_hmlc.loss.supcon" if name == "supcon" else "lightly_hmlc.loss.hmlc"
    module = pytest.importorskip(module_name)
    cls = module.SupConLoss if name == "supcon" else module.HMLCLoss
    assert isinstance(create_loss(name), cls)


def test_hmlc_builtins_pass_their_loss_type() -> None:
    module = pytest.importorskip("lightly_hmlc.loss.hmlc")
    for name in ("hmc", "hce", "hmce"):
        loss = create_loss(name)
        assert isinstance(loss, module.HMLCLoss)
        assert getattr(loss, "loss_type", name) == name


# Entry points: a real (temporary) installed distribution.
PLUGIN_MODULE = """
from torch import nn

class PluginLoss(nn.Module):
    def __init__(self, margin: float = 0.5) -> None:
        super().__init__()
        self.margin = margin

class PluginHead(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

def not_a_module() -> float:
    return 1.0

NOT_CALLABLE = 3
"""

PLUGIN_ENTRY_POINTS = """
[lightly_hmlc.losses]
plugin-loss = {module}:PluginLoss
broken-loss = {module}_missing:PluginLoss
raw-loss = {module}:not_a_module

[lightly_hmlc.heads]
plugin-head = {module}:PluginHead
constant-head = {module}:NOT_CALLABLE

[some.other.group]
other = {module}:PluginLoss
"""


def _install_plugin(
    root: Path, monkeypatch: pytest.MonkeyPatch, dist: str, module: str, entry_points: str
) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module}.py").write_text(PLUGIN_MODULE)
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points.format(module=module))
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delitem(sys.modules, module, raising=False)
    importlib.invalidate_caches()


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    module = f"hmlc_plugin_{tmp_path.name.replace('-', '_')}"
    _install_plugin(tmp_path, monkeypatch, "hmlc-test-plugin", module, PLUGIN_ENTRY_POINTS)
    registry._reset_discovery()
    yield module
    sys.modules.pop(module, None)
    registry._reset_discovery()


def test_entry_point_components_are_created(plugin: str) -> None:
    loss = create_loss("plugin-loss", margin=0.2)
    assert type(loss).__name__ == "PluginLoss"
    assert type(loss).__module__ == plugin
    assert loss.margin == 0.2
    head = create_head("plugin-head", dim=7)
    assert type(head).__name__ == "PluginHead" and head.dim == 7

    components = list_components()
    assert {"plugin-loss", "broken-loss", "raw-loss"} <= set(components["losses"])
    assert "plugin-head" in components["heads"]
    assert "other" not in components["losses"] + components["heads"]


def test_entry_points_are_imported_lazily(plugin: str) -> None:
    names = list_components()["losses"]
    assert "plugin-loss" in names
    assert plugin not in sys.modules
    create_loss("plugin-loss")
    assert plugin in sys.modules


def test_builtin_wins_over_entry_point(
    plugin: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shadow = "[lightly_hmlc.losses]\nsupcon = {module}:PluginLoss\n"
    _install_plugin(tmp_path / "shadow", monkeypatch, "hmlc-shadow", plugin + "_shadow", shadow)
    registry._reset_discovery()
    with pytest.warns(UserWarning, match=r"Ignoring entry point 'supcon = .*hmlc-shadow 0\.1"):
        origin = registry._LOSSES._lookup("supcon").origin
    assert origin.startswith("built-in")


def test_broken_entry_point_names_itself_and_distribution(plugin: str) -> None:
    with pytest.raises(ImportError) as info:
        create_loss("broken-loss")
    message = str(info.value)
    assert "broken-loss" in message
    assert "hmlc-test-plugin 0.1" in message
    assert "ModuleNotFoundError" in message


def test_entry_point_that_is_not_a_factory(plugin: str) -> None:
    with pytest.raises(TypeError, match=r"constant-head.*not callable"):
        create_head("constant-head")
    with pytest.raises(TypeError, match=r"raw-loss.*hmlc-test-plugin.*expected an nn.Module"):
        create_loss("raw-loss")


def test_discovery_happens_once(
    plugin: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    list_components()
    late = "[lightly_hmlc.losses]\nlate-loss = {module}:PluginLoss\n"
    _install_plugin(tmp_path / "late", monkeypatch, "hmlc-late-plugin", plugin + "_late", late)
    assert "late-loss" not in list_components()["losses"]  # cached
    registry._reset_discovery()
    assert "late-loss" in list_components()["losses"]
    assert type(create_loss("late-loss")).__module__ == plugin + "_late"


def test_two_distributions_claiming_one_name(
    plugin: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rival = "[lightly_hmlc.losses]\nplugin-loss = {module}:PluginHead\n"
    _install_plugin(tmp_path / "rival", monkeypatch, "hmlc-rival", plugin + "_rival", rival)
    registry._reset_discovery()
    with pytest.warns(UserWarning, match=r"Two entry points name loss 'plugin-loss'.*hmlc-rival"):
        list_components()
    # The first distribution on sys.path (the rival, prepended last) wins.
    assert type(create_loss("plugin-loss", dim=1)).__module__ == plugin + "_rival"


def test_code_registration_shadows_entry_point(plugin: str) -> None:
    list_components()
    with pytest.warns(UserWarning, match="shadows the entry point 'plugin-loss"):
        register_loss("plugin-loss", Scaled)
    assert type(create_loss("plugin-loss")) is Scaled
    # Registered before discovery: the code registration also wins.
    registry._reset_discovery()
    with pytest.warns(UserWarning, match="Ignoring entry point 'plugin-loss"):
        assert type(create_loss("plugin-loss")) is Scaled


def test_missing_constructor_arguments_are_named() -> None:
    with pytest.raises(
        TypeError, match=r"create_loss\('g-hmlc'\) cannot build GHMLCLoss.*num_levels"
    ):
        create_loss("g-hmlc")
    assert type(create_loss("g-hmlc", num_levels=2, dim=8)).__name__ == "GHMLCLoss"
