"""The `knotwork` command, with the plugins installed in this environment."""

from __future__ import annotations

import subprocess
import sys

import pytest

from knotwork.cli import build_parser, main
from knotwork.kernel import Hooks, make_plugin_manager

FIRST_PARTY = {"local": "knotwork-local", "native": "knotwork-native", "routing": "knotwork-routing",
               "balancers": "knotwork-balancers", "telemetry": "knotwork-telemetry"}


def knotwork(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "knotwork", *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def subcommands() -> list[str]:
    parser = build_parser(Hooks(make_plugin_manager()))
    (sub,) = [a for a in parser._actions if a.dest == "command"]  # noqa: SLF001 - argparse has no public accessor
    return sorted(sub.choices)


def test_help():
    result = knotwork("--help")
    assert result.returncode == 0, result.stderr
    assert "plugins" in result.stdout and "check" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_every_subcommand_has_help(capsys):
    names = subcommands()
    assert {"plugins", "check", "control", "proxy"} <= set(names)
    for name in names:
        with pytest.raises(SystemExit) as info:
            main([name, "--help"])
        assert info.value.code == 0, name
        assert f"usage: knotwork {name}" in capsys.readouterr().out


def test_no_command_is_a_usage_error():
    result = knotwork()
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_plugins_lists_every_first_party_plugin_with_its_distribution(tmp_path):
    result = knotwork("plugins", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[1]: line.split() for line in result.stdout.splitlines()[1:] if line[:1].isdigit()}
    for plugin, dist in FIRST_PARTY.items():
        assert plugin in rows, result.stdout
        assert rows[plugin][2] == dist


def test_plugins_marks_what_a_mesh_selects(tmp_path):
    (tmp_path / "knotwork.yaml").write_text("plugins: {platform: local}\n")
    result = knotwork("plugins", "--mesh", str(tmp_path))
    assert result.returncode == 0, result.stderr
    rows = {line.split()[1]: line.split() for line in result.stdout.splitlines()[1:] if line[:1].isdigit()}
    assert rows["local"][4] == "yes"


def test_check_an_empty_mesh_uses_the_defaults(tmp_path):
    (tmp_path / "knotwork.yaml").write_text("{}\n")
    result = knotwork("check", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "ok (platform local, engine native)" in result.stdout


def test_a_usage_error_is_one_line_and_exit_2(tmp_path):
    result = knotwork("proxy", "--engine", "nope", "--node", "sidecar~x", "--control", "127.0.0.1:1")
    assert result.returncode == 2
    assert result.stderr.startswith("knotwork proxy: --engine: expected an installed proxy engine (")
    assert result.stderr.rstrip().endswith("got 'nope'") and "Traceback" not in result.stderr


def test_control_refuses_a_bad_listen_address_before_starting(tmp_path):
    (tmp_path / "knotwork.yaml").write_text("plugins: {platform: local}\n")
    result = knotwork("control", "--metrics-listen", "bogus", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr == "knotwork control: --metrics-listen: expected host:port (port 0: any free one), got 'bogus'\n"
