"""plan --fail-on-drift, against the stand-in over HTTP: exit 4 while the CMDB differs from AWS, 0 once
it does not; a run that is not ok keeps its own exit code."""

from __future__ import annotations

from connector.cli import main
from connector.sandbox.servicenow import ServiceNowStandIn

from .test_lookups import PASSWORD, tagged_inventory


def test_a_plan_with_writes_to_make_exits_4_and_one_without_0(tmp_path, monkeypatch, capsys):
    _by_instance, inventory = tagged_inventory(tmp_path, [{}, {}])
    monkeypatch.setenv("CMDB_SERVICENOW__PASSWORD", PASSWORD)
    with ServiceNowStandIn(users={"svc": PASSWORD}) as server:
        config = tmp_path / "config.toml"
        config.write_text(f'[aws]\nexternal_id = "not-used-here"\n[servicenow]\ninstance_url = "{server.url}"\n'
                          'username = "svc"\n[report]\noutput_dir = "reports"\n')
        plan = ["--config", str(config), "plan", "--inventory", str(inventory), "--fail-on-drift"]
        assert main(plan) == 4
        assert "--fail-on-drift: exit 4" in capsys.readouterr().out
        assert main(plan[:-1]) == 0  # without the flag, a plan is ok whatever it would write
        assert server.writes() == 0
        assert main(["--config", str(config), "run", "--inventory", str(inventory)]) == 0
        capsys.readouterr()
        assert main(plan) == 0
        assert "drift:" not in capsys.readouterr().out
        server.faults.update({"missing_tables": ["cmdb_ci_network"]})  # a class that cannot be read: exit 1 stays
        assert main(plan) == 1


def test_a_plan_names_the_fields_edited_in_the_cmdb_on_the_terminal_and_in_the_report(tmp_path, monkeypatch, capsys):
    import json

    from .test_lookups import VM, vms

    _by_instance, inventory = tagged_inventory(tmp_path, [{}, {}, {}])
    monkeypatch.setenv("CMDB_SERVICENOW__PASSWORD", PASSWORD)
    with ServiceNowStandIn(users={"svc": PASSWORD}) as server:
        config = tmp_path / "config.toml"
        config.write_text(f'[aws]\nexternal_id = "not-used-here"\n[servicenow]\ninstance_url = "{server.url}"\n'
                          'username = "svc"\n[report]\noutput_dir = "reports"\n')
        assert main(["--config", str(config), "run", "--inventory", str(inventory)]) == 0
        first, second, _third = sorted(vms(server).values(), key=lambda r: r["object_id"])
        server.store.update(VM, first["sys_id"], {"memory": "512", "name": "renamed by hand"}, "admin")
        server.store.update(VM, second["sys_id"], {"memory": ""}, "admin")
        capsys.readouterr()
        assert main(["--config", str(config), "plan", "--inventory", str(inventory)]) == 0
        assert "\n  cmdb_ci_vm_instance: 2 updated (memory 2, name 1)\n" in capsys.readouterr().out
        report = json.loads((tmp_path / "reports" / "latest.json").read_text())
        assert report["drifted_fields"] == {VM: {"memory": 2, "name": 1}}
        assert main(["--config", str(config), "run", "--inventory", str(inventory)]) == 0
        assert vms(server)[first["object_id"]]["memory"] == "1024"  # the synthetic t3.micro's, from its type
        assert json.loads((tmp_path / "reports" / "latest.json").read_text())["drifted_fields"] == {
            VM: {"memory": 2, "name": 1}}
        assert main(["--config", str(config), "plan", "--inventory", str(inventory)]) == 0
        assert json.loads((tmp_path / "reports" / "latest.json").read_text())["drifted_fields"] == {}
