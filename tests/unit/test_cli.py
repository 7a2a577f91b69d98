"""CLI behaviours a user meets first."""

from __future__ import annotations

import builtins

from connector.cli import main


def test_demo_without_moto_says_what_to_install(monkeypatch, capsys):
    real = builtins.__import__

    def no_moto(name, *args, **kwargs):
        if name.startswith("moto"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_moto)
    assert main(["demo"]) == 2
    assert "python -m pip install 'cmdb-connector[demo]'" in capsys.readouterr().err


def test_no_config_anywhere_is_a_clear_usage_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["validate"]) == 2
    assert "no config: pass --config PATH" in capsys.readouterr().err


def test_bad_duration_and_shard_are_usage_errors(tmp_path, capsys):
    config = tmp_path / "config.toml"
    config.write_text('[aws]\nexternal_id = "xx-yy"\n[servicenow]\ninstance_url = "http://127.0.0.1:9"\n'
                      'username = "u"\npassword = "p"\n')
    assert main(["--config", str(config), "run", "--every", "soon"]) == 2
    assert "a duration is a whole number and a unit" in capsys.readouterr().err
    assert main(["--config", str(config), "plan", "--shard", "5/4"]) == 2
    assert "--shard '5/4': K must be between 1 and N" in capsys.readouterr().err
