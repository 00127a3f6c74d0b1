"""The `deploy` command line: help without heavy imports, one-line errors, settings, exit codes."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT, run_deploy


def env_with(**extra):
    import os

    return {**os.environ, **extra}


def test_help_imports_nothing_heavy():
    code = (
        "import sys; from deploy.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'moshi', 'csm_runtime', 'fabric', 'paramiko', 'httpx')"
        " if m in sys.modules]\n"
        "print('HEAVY', heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert "HEAVY []" in out
    assert "provision" in out and "teardown" in out


def test_deploy_package_never_imports_the_runtime_stack():
    offenders = []
    for path in (ROOT / "deploy").rglob("*.py"):
        for line in path.read_text().splitlines():
            words = line.strip().split()
            heavy = ("torch", "transformers", "moshi", "csm_runtime")
            if len(words) >= 2 and words[0] in ("import", "from") and words[1].split(".")[0] in heavy:
                offenders.append(f"{path.name}: {line.strip()}")
    assert offenders == []


def test_unknown_gpu_is_one_line_listing_aliases():
    res = run_deploy(["offers", "--gpu", "9999"], env_with())
    assert res.returncode == 1 and res.stdout == ""
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith("Error: unknown GPU '9999'; known: ") and "4090" in line and "A100" in line


def test_bad_price_is_one_line():
    for bad in ("abc", "-1", "0", "nan"):
        res = run_deploy(["provision", "--gpu", "4090", "--max-price", bad], env_with())
        assert res.returncode == 1, bad
        (line,) = res.stderr.strip().splitlines()
        assert line.startswith("Error: --max-price"), line


def test_bad_flag_and_bad_env_are_one_line():
    res = run_deploy(["status", "--bogus"], env_with())
    assert res.returncode == 2
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith("Error: No such option: --bogus")
    res = run_deploy(["status"], env_with(DEPLOY_POLL_INTERVAL_S="fast"))
    assert res.returncode == 1
    assert res.stderr.strip() == "Error: DEPLOY_POLL_INTERVAL_S='fast' is not a number"
    res = run_deploy(["status"], env_with(DEPLOY_POLL_INTERVALS="1"))
    assert res.returncode == 1
    assert res.stderr.strip() == "Error: unknown setting DEPLOY_POLL_INTERVALS (did you mean DEPLOY_POLL_INTERVAL_S?)"


def test_show_config_reports_key_source_never_the_key(deploy_home):
    res = run_deploy(["--show-config"], env_with(VAST_API_KEY="sekrit-123456", DEPLOY_MAX_OFFERS="5"))
    assert res.returncode == 0
    assert "max_offers = 5" in res.stdout
    assert f"ledger = '{deploy_home / 'ledger.sqlite3'}'" in res.stdout
    assert "vast_api_key = 'VAST_API_KEY'" in res.stdout
    assert "sekrit" not in res.stdout + res.stderr


def test_teardown_needs_id_or_all_and_yes_without_tty(deploy_home):
    res = run_deploy(["teardown"], env_with())
    assert res.returncode == 1 and "give one rental ID or --all" in res.stderr
    res = run_deploy(["teardown", "42"], env_with())
    assert res.returncode == 1 and "no rental 42" in res.stderr


def test_cost_on_empty_ledger_and_bad_since(deploy_home):
    res = run_deploy(["cost", "--json"], env_with())
    assert res.returncode == 0, res.stderr
    assert '"total_usd": 0' in res.stdout
    res = run_deploy(["cost", "--since", "last tuesday"], env_with())
    assert res.returncode == 1 and "not a date" in res.stderr


def test_debug_shows_traceback(deploy_home):
    res = run_deploy(["teardown", "42"], env_with(DEPLOY_DEBUG="1"))
    assert res.returncode == 1 and "Traceback" in res.stderr and res.stderr.strip().endswith("them")


def test_every_json_flag_is_the_one_shared_declaration():
    """`--json` is declared once (deploy/commands/options.py `Json`); a command declaring its own would show here."""
    import click
    import typer.main

    from deploy.cli import app

    def commands(cmd: click.Command, path: str):
        yield path, cmd
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from commands(sub, f"{path} {name}")

    found = {
        path: (tuple(opt.opts), opt.help)
        for path, cmd in commands(typer.main.get_command(app), "deploy")
        for opt in cmd.params
        if "--json" in getattr(opt, "opts", ())
    }
    assert len(found) >= 12, sorted(found)  # offers, provision, status, teardown, cost, ... gateway's subcommands
    assert set(found.values()) == {(("--json",), "Machine-readable JSON on stdout.")}, found
