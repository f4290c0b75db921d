"""The `campaign` group loads each command's module only when the command is asked for."""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections import defaultdict

import click
from click.testing import CliRunner

from campaigns.cli import COMMAND_MODULES, main


def test_each_module_registers_exactly_the_commands_the_group_maps_to_it() -> None:
    mapped: dict[str, set[str]] = defaultdict(set)
    for command, module in COMMAND_MODULES.items():
        mapped[module].add(command)
    for module, commands in mapped.items():
        group = click.Group()
        importlib.import_module(f"campaigns.cli.{module}").register(group)
        assert set(group.commands) == commands, module


def test_help_lists_every_command_with_its_summary() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    listed = {line.split()[0] for line in result.output.split("Commands:")[1].splitlines() if line}
    assert listed == set(COMMAND_MODULES) | {"db"}
    assert "Import a contact list" in result.output


def test_an_unknown_command_is_refused_by_name() -> None:
    result = CliRunner().invoke(main, ["imprt", "x.csv"])
    assert result.exit_code == 2
    assert "No such command 'imprt'" in result.output


def test_an_import_does_not_load_the_simulator_the_ingester_or_the_reports() -> None:
    code = (
        "import sys\n"
        "from campaigns.cli import main\n"
        "try:\n"
        "    main(['import', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = set(done.stdout.split())
    assert "campaigns.cli.imports" in loaded
    for heavy in (
        "campaigns.enablex.simulator",
        "campaigns.webhooks",
        "campaigns.reporting",
        "campaigns.export",
        "arq",
        "pandas",
    ):
        assert heavy not in loaded, heavy


def test_the_console_script_runs_the_command_it_preloads() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "campaigns.cli", "-v", "import", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Usage: campaign import [OPTIONS] FILE")
    version = subprocess.run(
        [sys.executable, "-m", "campaigns.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("campaign, version ")
