"""CLI behaviours a user meets first."""

from __future__ import annotations

import builtins

from connector.cli import _parser, main


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
    assert main(["--config", str(config), "run", "--every", "0m"]) == 2
    assert "'0m': the duration must be more than 0" in capsys.readouterr().err
    assert main(["--config", str(config), "plan", "--shard", "5/4"]) == 2
    assert "--shard '5/4': K must be between 1 and N" in capsys.readouterr().err


def test_each_scheduled_run_reads_the_config_and_its_secret_files_again(tmp_path, monkeypatch, capsys):
    """run --every: a password rotated in its *_FILE, or an account added, takes effect at the next run;
    a config broken meanwhile skips that run, named in the log, and the schedule goes on."""
    import json

    from connector import ops, run
    from connector.run import RunOutcome

    config, secret = tmp_path / "config.toml", tmp_path / "password"
    good = ('[aws]\nexternal_id = "xx-yy"\naccounts = ["111111111111"]\n[servicenow]\n'
            'instance_url = "http://127.0.0.1:9"\nusername = "u"\n[report]\noutput_dir = "reports"\n')
    config.write_text(good)
    secret.write_text("first-secret\n")
    monkeypatch.setenv("CMDB_SERVICENOW__PASSWORD_FILE", str(secret))
    seen = []

    def run_pipeline(settings, **_kw):
        seen.append((settings.servicenow.password.get_secret_value(), settings.aws.accounts))
        if len(seen) == 1:  # after the first run: the secret rotated, and the config saved broken
            secret.write_text("second-secret\n")
            config.write_text(good + "oops = [\n")
        else:
            ops._STOP.set()
        return RunOutcome(0, {"mode": "run", "tables": {}, "relations": {}, "changes": []}, tmp_path / "r.json")

    waits = []

    def wait(_delay):  # the schedule's wait before each run; before the third, the config is mended
        waits.append(_delay)
        if len(waits) == 3:
            config.write_text(good.replace('"111111111111"]', '"111111111111", "222222222222"]'))
        return False

    monkeypatch.setattr(run, "run_pipeline", run_pipeline)
    monkeypatch.setattr(ops._STOP, "wait", wait)
    try:
        assert main(["--config", str(config), "run", "--every", "1h", "--jitter", "0s"]) == ops.EXIT_INTERRUPTED
    finally:
        ops._STOP.clear()
    assert seen == [("first-secret", ["111111111111"]), ("second-secret", ["111111111111", "222222222222"])]
    err = capsys.readouterr().err
    errors = [entry["message"] for entry in map(json.loads, err.splitlines()) if entry["level"] == "error"]
    assert len(errors) == 1 and errors[0].startswith(f"run not made: {config}: invalid TOML")
    assert "first-secret" not in err and "second-secret" not in err


def test_config_and_logging_options_after_the_command_too(tmp_path, capsys):
    """cmdb-connector run --config F works as cmdb-connector --config F run does; an option given
    before the command is not undone by the command's own, absent, one."""
    parse = _parser().parse_args
    after = parse(["plan", "--config", "a.toml", "-v", "--log-format", "json", "--shard", "1/2"])
    assert (after.config, after.verbose, after.log_format, after.shard) == ("a.toml", True, "json", "1/2")
    before = parse(["--config", "b.toml", "-v", "--log-format", "text", "validate"])
    assert (before.config, before.verbose, before.log_format) == ("b.toml", True, "text")
    neither = parse(["validate"])
    assert (neither.config, neither.verbose, neither.log_format) == (None, False, "auto")
    assert parse(["--config", "b.toml", "run", "--config", "c.toml"]).config == "c.toml"  # the later one

    bad = tmp_path / "bad.toml"
    bad.write_text("[servicenow\n")
    assert main(["validate", "--config", str(bad)]) == 2
    assert f"{bad}: invalid TOML" in capsys.readouterr().err


def test_a_saved_inventory_that_cannot_be_read_is_named_before_servicenow_is_asked(tmp_path, capsys):
    """The login check comes after a saved inventory is read: a wrong path is a usage error (exit 2) at
    once, not a failed run once the (here unreachable) instance has been tried."""
    config = tmp_path / "config.toml"
    config.write_text('[aws]\nexternal_id = "xx-yy"\n[servicenow]\ninstance_url = "http://127.0.0.1:9"\n'
                      f'username = "u"\npassword = "p"\n[report]\noutput_dir = "{tmp_path / "reports"}"\n')
    assert main(["--config", str(config), "run", "--inventory", str(tmp_path / "nope.jsonl")]) == 2
    assert f"{tmp_path / 'nope.jsonl'}: cannot read the inventory" in capsys.readouterr().err


def test_init_mappings_into_a_file_or_a_folder_it_cannot_write_is_a_usage_error(tmp_path, capsys):
    taken = tmp_path / "config.toml"
    taken.write_text("")
    assert main(["init-mappings", str(taken)]) == 2
    assert f"{taken}: exists and is not a folder; choose a new folder" in capsys.readouterr().err
    assert main(["init-mappings", str(taken / "maps")]) == 2  # under a file: no folder can be made there
    assert f"{taken / 'maps'}: cannot write the mapping files there: " in capsys.readouterr().err
    assert main(["init-mappings", str(tmp_path / "maps")]) == 0 and (tmp_path / "maps" / "README.md").exists()


def test_a_path_that_cannot_be_written_is_named_without_a_traceback(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    config = tmp_path / "config.toml"
    config.write_text('[aws]\nexternal_id = "xx-yy"\n[servicenow]\ninstance_url = "http://127.0.0.1:9"\n'
                      f'username = "u"\npassword = "p"\n[report]\noutput_dir = "{blocker / "reports"}"\n')
    assert main(["plan", "--config", str(config), "--inventory", str(tmp_path / "inventory.jsonl")]) == 2
    err = capsys.readouterr().err
    assert f"\nerror: {blocker / 'reports'}: Not a directory (check the path" in f"\n{err}" and "Traceback" not in err


def test_collect_into_a_folder_is_named_before_anything_is_collected(tmp_path, monkeypatch, capsys):
    from connector import run

    config = tmp_path / "config.toml"
    config.write_text('[aws]\nexternal_id = "xx-yy"\n[servicenow]\ninstance_url = "http://127.0.0.1:9"\n'
                      'username = "u"\npassword = "p"\n')
    collected = []
    monkeypatch.setattr(run, "collect_from_aws", lambda *a, **k: collected.append(a))
    assert main(["--config", str(config), "collect", "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"error: {tmp_path}: is a folder, not a file (check the path" in err and "Traceback" not in err
    assert collected == []  # minutes of AWS calls not made for a file that cannot be written


def test_account_option_reaches_the_targets_of_check_access_and_collect(tmp_path, monkeypatch, capsys):
    from connector import run
    from connector.aws import access, targets
    from connector.models import Account, Inventory

    config = tmp_path / "config.toml"
    config.write_text('[aws]\nexternal_id = "xx-yy"\n[servicenow]\ninstance_url = "http://127.0.0.1:9"\n'
                      'username = "u"\npassword = "p"\n')
    asked = []

    def find_targets(*_args, only=frozenset(), **_kw):
        asked.append(only)
        return targets.Targets([Account("111111111111", "m")], None)

    monkeypatch.setattr(targets, "find_targets", find_targets)
    monkeypatch.setattr(access, "check_access", lambda *a: [access.AccessRow("111111111111", "m", "ok", "role assumed", "yes")])
    assert main(["--config", str(config), "check-access", "--aws-only", "--account", "111111111111",
                 "--account", "222222222222"]) == 0
    assert asked == [frozenset({"111111111111", "222222222222"})]
    monkeypatch.setattr(run, "collect_from_aws", lambda *a, only=frozenset(), **k: asked.append(only) or Inventory())
    main(["--config", str(config), "collect", "--output", str(tmp_path / "i.jsonl"), "--account", "333333333333"])
    assert asked[-1] == frozenset({"333333333333"})
    assert "(0 resources, 0 scopes)" in capsys.readouterr().out
    assert main(["--config", str(config), "collect", "--output", str(tmp_path / "i.jsonl"), "--account", "33"]) == 2
    assert "--account '33': an AWS account id is 12 digits" in capsys.readouterr().err


def test_check_access_says_when_the_organizations_ous_cannot_be_read_and_exits_3(tmp_path, monkeypatch, capsys):
    from connector.aws import access, targets
    from connector.models import Account, OrganizationTree

    config = tmp_path / "config.toml"
    config.write_text('[aws]\nexternal_id = "xx-yy"\n[servicenow]\ninstance_url = "http://127.0.0.1:9"\n'
                      'username = "u"\npassword = "p"\n')
    tree = OrganizationTree("111111111111", {}, [], failure=("denied", "cannot read the Organization's OUs through "
                                                             "the base credentials: AccessDeniedException on ListRoots"))
    monkeypatch.setattr(targets, "find_targets", lambda *a, **k: targets.Targets([Account("111111111111", "m")], tree))
    monkeypatch.setattr(access, "check_access", lambda *a: [access.AccessRow("111111111111", "m", "ok", "role assumed", "yes")])
    assert main(["--config", str(config), "check-access", "--aws-only"]) == 3
    out = capsys.readouterr().out.splitlines()
    assert out[-2] == "1 account(s): 1 ok, 0 skipped, 0 failed"
    assert out[-1] == ("organization: cannot read the Organization's OUs through the base credentials: "
                       "AccessDeniedException on ListRoots")


def test_check_access_calls_prints_the_refused_listings_and_exits_3(tmp_path, monkeypatch, capsys):
    from connector.aws import access, targets
    from connector.models import Account

    config = tmp_path / "config.toml"
    config.write_text('[aws]\nexternal_id = "xx-yy"\nregions = ["eu-west-1", "us-east-1"]\naccounts = ["111111111111"]\n'
                      '[servicenow]\ninstance_url = "http://127.0.0.1:9"\nusername = "u"\npassword = "p"\n')
    monkeypatch.setattr(targets, "find_targets", lambda *a, **k: targets.Targets([Account("111111111111", "m")], None))
    monkeypatch.setattr(access, "check_access", lambda *a: [access.AccessRow("111111111111", "m", "ok", "role assumed", "yes")])
    asked = []

    def calls(pool, account_ids, sources, regions, workers):
        asked.append((account_ids, regions, "ec2:instance" in sources))
        return [access.CallRow("111111111111", "eu-west-1", "rds:describe_db_instances", "denied", "AccessDeniedException"),
                access.CallRow("111111111111", "us-east-1", "ec2:describe_instances", "ok", "")]

    monkeypatch.setattr(access, "check_calls", calls)
    assert main(["--config", str(config), "check-access", "--aws-only"]) == 0 and asked == []  # only when asked
    assert main(["--config", str(config), "check-access", "--aws-only", "--calls"]) == 3
    assert asked == [(["111111111111"], ["eu-west-1", "us-east-1"], True)]  # every region configured
    out = capsys.readouterr().out.splitlines()
    assert "  111111111111 eu-west-1 rds:describe_db_instances: denied: AccessDeniedException" in out
    assert out[-1].startswith("calls: 2 listing(s) in 1 account(s) and 2 region(s): 1 allowed, 1 refused or failed")
