"""Packaging: the wheel carries the data the package reads at run time (built-in profiles, the zoo's pipelines and
their profiles), and the `eval` extra installs what `dit-cache demo` imports. Installing the wheel into a fresh
virtual environment and running from outside the checkout is `.ci/run`'s job (.ci/wheel_smoke.py): too slow here."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"  # a copy: building in the checkout would leave build/ and *.egg-info there
    shutil.copytree(
        ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "runs", "out",
                                                     "__pycache__", ".pytest_cache", ".hypothesis", ".ruff_cache")
    )  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp), str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if done.returncode != 0 and "No module named" in done.stderr:
        pytest.skip(f"cannot build here: {done.stderr.strip()[-200:]}")
    assert done.returncode == 0, done.stderr[-3000:]
    (found,) = tmp.glob("dit_cache-*.whl")
    return found


def test_wheel_holds_the_builtin_profiles_and_the_zoo(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "dit_cache/calibration/data/published_calibration.json" in names
    zoo = ROOT / "dit_cache" / "eval" / "zoo"
    shipped = sorted(
        p.relative_to(ROOT).as_posix() for p in zoo.rglob("*") if p.is_file() and p.suffix in (".json", ".safetensors")
    )
    assert len(shipped) > 20  # every pipeline folder: configs, tokenizers, weights, the saved profiles
    missing = [name for name in shipped if name not in names]
    assert not missing, missing
    for name in ("shapes-image", "shapes-video", "shapes-pixart"):  # every model with its shipped profile
        assert f"dit_cache/eval/zoo/{name}/transformer/diffusion_pytorch_model.safetensors" in names
        assert f"dit_cache/eval/zoo/{name}/dit_cache_profile.safetensors" in names
    assert not any(name.startswith(("tests/", "benchmarks/")) for name in names)


def test_eval_extra_installs_what_the_demo_imports():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    eval_extra = {req.split(">")[0].split("=")[0].split(";")[0].strip().lower() for req in extras["eval"]}
    # accelerate: diffusers cannot load the zoo's text encoders without it ("low_cpu_mem_usage cannot be False")
    assert {"accelerate", "transformers", "scikit-image", "matplotlib", "pillow"} <= eval_extra
