"""The wheel ships the pipeline as ``mogd.integrations`` with its data and the ``mogd-rlhf`` script.

A copy of the sources is built with the installed setuptools (no network, nothing written into the
checkout) and the wheel's file list and entry points are checked against the checkout.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_integrations_import_each_other_relatively():
    # an absolute `integrations.x` import works in a checkout only: the wheel has mogd.integrations
    for path in sorted((ROOT / "integrations").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                assert not node.module.startswith("integrations"), (path, node.module)
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("integrations") for a in node.names), path


@pytest.mark.slow
def test_wheel_ships_the_pipeline_and_its_script(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("mogd", "integrations"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*cmd, str(src), "-w", str(tmp_path / "dist")], check=True, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("mogd-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = next(
            z.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt")
        )

    # every module of every sub-package (ppo/, run/, worlds/...), and the tiny world's data
    shipped = {
        "mogd/" + p.relative_to(ROOT).as_posix()
        for p in (ROOT / "integrations").rglob("*")
        if p.suffix in (".py", ".jsonl", ".json") and "__pycache__" not in p.parts
    }
    tiny = "mogd/integrations/worlds/tiny/data/"
    assert {tiny + "train.jsonl", tiny + "eval.jsonl", tiny + "helpful_head.json"} <= shipped
    assert {"mogd/integrations/ppo/advantages.py", "mogd/integrations/run/config.py"} <= shipped
    assert shipped <= names, sorted(shipped - names)
    assert {f"mogd/kernels/{p.name}" for p in (ROOT / "mogd" / "kernels").glob("*.py")} <= names
    # no top-level `integrations` or `kernels` package: `kernels` is Hugging Face's hub-kernels
    assert not any(n.startswith(("integrations/", "kernels/")) for n in names)
    assert "mogd-rlhf = mogd.integrations.cli:main" in entry_points


@pytest.mark.slow
def test_scripts_run_from_any_directory(tmp_path):
    # `python integrations/rlhf_mistral.py` puts integrations/ first on sys.path, where trl.py would
    # shadow TRL; the script entry imports the package from the checkout instead
    script = ROOT / "integrations" / "rlhf_mistral.py"
    argv = [sys.executable, str(script), "--preset", "mistral-7b", "--dry-run", "--json"]
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, check=True)
    report = json.loads(done.stdout)
    assert report["config"]["lr"] == 1e-6 and report["plan"]["policy"]["parameters"] > 7e9
    # after the script's entry code, `import trl` (transformers and peft probe for it) must not
    # find integrations/trl.py: run the script as Python would, then look where trl resolves
    probe = (
        "import importlib.util, runpy, sys\n"
        "sys.path[0] = sys.argv[1]\n"  # what `python integrations/rlhf_mistral.py` does
        "sys.argv = [sys.argv[2], '--dry-run', '--json']\n"
        "try:\n"
        "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "spec = importlib.util.find_spec('trl')\n"
        "print('TRL', spec.origin if spec else None)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(script.parent), str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    origin = done.stdout.rsplit("TRL ", 1)[1].strip()
    assert origin == "None" or "integrations" not in origin, origin


def test_mogd_rlhf_routes_subcommands_and_training(capsys):
    from integrations import cli

    for command in cli.SUBCOMMANDS:
        with pytest.raises(SystemExit) as exit_:
            cli.main([command, "--help"])
        assert exit_.value.code == 0
        assert f"evaluate.py {command}" in capsys.readouterr().out  # the subcommand's own help
    assert cli.main(["--preset", "mistral-7b", "--dry-run", "--json"]) == 0  # training's main
    assert json.loads(capsys.readouterr().out)["config"]["preset"] == "mistral-7b"
