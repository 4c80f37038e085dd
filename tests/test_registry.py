import subprocess
import sys
import textwrap

import pytest

from bench.registry import METHODS, Registry, RegistryError


def test_register_list_wildcards_and_unknown_name():
    reg = Registry("things", None)

    @reg.register("alpha_unet", description="first")
    class A:
        pass

    @reg.register("beta")
    def b():
        """Beta builder."""

    assert reg.names() == ["alpha_unet", "beta"]
    assert reg.names("*unet*") == ["alpha_unet"]
    assert reg.entry("beta").description == "Beta builder."
    with pytest.raises(RegistryError, match=r"unknown thing 'alpah_unet'. Did you mean 'alpha_unet'.*Valid things"):
        reg.get("alpah_unet")


def test_duplicate_name_is_an_error():
    reg = Registry("things", None)
    reg.register("x")(type("A", (), {}))
    with pytest.raises(RegistryError, match="already registered"):
        reg.register("x")(type("B", (), {}))


def test_availability_separates_missing_dependency_and_weights():
    reg = Registry("things", None)
    reg.register("needs_pkg", requires=("no_such_module_xyz",))(object)
    reg.register("needs_weights", check=lambda: "needs weights")(dict)
    reg.register("fine")(list)
    assert reg.entry("needs_pkg").availability() == "missing no_such_module_xyz"
    assert reg.entry("needs_weights").availability() == "needs weights"
    assert reg.entry("fine").availability() == "ok"


def test_builtins_are_discovered():
    assert "unet" in METHODS.names()


def make_plugin(tmp_path):
    """A third-party package, installed the way pip would (a .dist-info with entry points) on sys.path."""
    pkg = tmp_path / "bench_plugin_demo"
    (pkg / "methods").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "method.py").write_text(textwrap.dedent('''
        from bench.methods.unet import UNet
        from bench.registry import register_method

        @register_method("demo_plugin_method", description="a method from outside the package")
        class Demo(UNet):
            pass
    '''))
    (pkg / "methods" / "demo_plugin.yaml").write_text(
        "impl: demo_plugin_method\ndescription: demo plugin card\n_base_: unet\n")
    dist = tmp_path / "bench_plugin_demo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bench-plugin-demo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[physeg_bench.methods]\ndemo = bench_plugin_demo.method\n\n"
        "[physeg_bench.cards]\ndemo = bench_plugin_demo\n")
    return tmp_path


def test_plugin_from_outside_appears_in_bench_list(tmp_path):
    site = make_plugin(tmp_path)
    env = {**__import__("os").environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-m", "bench", "list", "methods"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "demo_plugin" in out.stdout and "demo_plugin_method" in out.stdout
    shown = subprocess.run([sys.executable, "-m", "bench", "config", "show", "-m", "demo_plugin", "-d", "bbbc039"],
                           env=env, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "impl: demo_plugin_method" in shown.stdout and "boundary_width" in shown.stdout  # inherited from unet
