"""run --approved PLAN.json, against the stand-in over HTTP: only the changes the reviewed plan shows are
made; what came since is held back and named; plan --approved predicts it; a reviewed plan that cannot be
one (a run's report, another instance's, with --every) is refused with exit 2."""

from __future__ import annotations

import json

from connector.cli import main
from connector.sandbox.servicenow import ServiceNowStandIn

from .test_lookups import PASSWORD, VM, tagged_inventory, vms


def configure(tmp_path, url: str):
    config = tmp_path / "config.toml"
    config.write_text(f'[aws]\nexternal_id = "not-used-here"\n[servicenow]\ninstance_url = "{url}"\n'
                      'username = "svc"\n[report]\noutput_dir = "reports"\n')
    return config


def latest(tmp_path) -> dict:
    return json.loads((tmp_path / "reports" / "latest.json").read_text())


def test_only_the_reviewed_changes_are_made_and_what_came_since_waits_for_a_review(tmp_path, monkeypatch, capsys):
    _by_instance, three = tagged_inventory(tmp_path / "three", [{}, {}, {}])
    _by_instance, four = tagged_inventory(tmp_path / "four", [{}, {}, {}, {}])  # the same three, and a fourth
    monkeypatch.setenv("CMDB_SERVICENOW__PASSWORD", PASSWORD)
    with ServiceNowStandIn(users={"svc": PASSWORD}) as server:
        config = configure(tmp_path, server.url)
        cli = ["--config", str(config)]
        assert main([*cli, "run", "--inventory", str(three)]) == 0
        first, second, third = sorted(vms(server).values(), key=lambda r: r["object_id"])
        for record in (first, second):
            server.store.update(VM, record["sys_id"], {"name": "renamed by hand"}, "admin")
        assert main([*cli, "plan", "--inventory", str(three)]) == 0
        reviewed = tmp_path / "reviewed-plan.json"
        reviewed.write_text((tmp_path / "reports" / "latest.json").read_text())
        assert {(c["action"], c["identity"].rsplit("/", 1)[1]) for c in latest(tmp_path)["changes"]} == {
            ("update", first["object_id"]), ("update", second["object_id"])}

        # since the review: a third CI edited by hand, a fourth instance in AWS
        server.store.update(VM, third["sys_id"], {"name": "renamed by hand"}, "admin")
        approved = ["--inventory", str(four), "--approved", str(reviewed)]
        writes = server.writes()
        assert main([*cli, "plan", *approved]) == 0
        predicted = latest(tmp_path)
        assert server.writes() == writes
        assert main([*cli, "run", *approved]) == 0
        made = latest(tmp_path)
        assert server.writes() == writes + 2  # the two updates reviewed, one request each
        # the run's stamp is its own time: the plan a second earlier may have found it written that second
        assert [(c["action"], c["identity"], c["fields"].keys() - {"last_discovered"}) for c in made["changes"]] == [
            (c["action"], c["identity"], c["fields"].keys() - {"last_discovered"}) for c in predicted["changes"]]
        found = vms(server)
        assert [found[r["object_id"]]["name"] for r in (first, second)] == [first["name"], second["name"]]
        assert found[third["object_id"]]["name"] == "renamed by hand" and len(found) == 3  # not reviewed: held
        approval = made["approval"]
        assert (approval["approved"], approval["kept"], approval["no_longer_due"]) == (2, 2, 0)
        assert approval["held_by_kind"][VM] == {"create": 1, "update": 1}
        assert approval["held_by_kind"]["cmdb_rel_ci"]["create"] >= 1  # the fourth's relations, with its create
        assert approval["held"] == predicted["approval"]["held"]
        assert made["guards"][0].startswith(f"{approval['held']} change(s) that the approved plan "
                                            f"{predicted['approval']['run_id']} ({reviewed}) does not hold")
        capsys.readouterr()

        # again: the reviewed changes are made already, nothing is written
        assert main([*cli, "run", *approved]) == 0
        assert server.writes() == writes + 2
        again = latest(tmp_path)
        assert (again["approval"]["kept"], again["approval"]["no_longer_due"]) == (0, 2)
        assert any(w.startswith("2 change(s) of the approved plan") for w in again["warnings"])

        # without --approved, the rest is made
        assert main([*cli, "run", "--inventory", str(four)]) == 0
        assert len(vms(server)) == 4 and vms(server)[third["object_id"]]["name"] == third["name"]
        assert latest(tmp_path)["approval"] is None


def test_a_report_that_is_not_a_plan_of_this_instance_is_refused(tmp_path, monkeypatch, capsys):
    _by_instance, inventory = tagged_inventory(tmp_path, [{}])
    monkeypatch.setenv("CMDB_SERVICENOW__PASSWORD", PASSWORD)
    with ServiceNowStandIn(users={"svc": PASSWORD}) as server:
        config = configure(tmp_path, server.url)
        cli = ["--config", str(config)]
        assert main([*cli, "run", "--inventory", str(inventory)]) == 0
        ran = tmp_path / "reports" / "latest.json"
        capsys.readouterr()
        assert main([*cli, "run", "--inventory", str(inventory), "--approved", str(ran)]) == 2
        assert "the report of a 'run', whose changes were made already: --approved takes the report of a plan" \
            in capsys.readouterr().err
        assert main([*cli, "plan", "--inventory", str(inventory)]) == 0
        plan = json.loads(ran.read_text())
        other = tmp_path / "other.json"
        other.write_text(json.dumps({**plan, "instance": "https://other.service-now.com"}))
        capsys.readouterr()
        assert main([*cli, "run", "--inventory", str(inventory), "--approved", str(other)]) == 2
        assert (f"{other}: a plan of https://other.service-now.com, not of servicenow.instance_url ({server.url})"
                in capsys.readouterr().err)
        good = {"action": "update", "table": VM, "identity": "arn:x", "fields": {"name": {"old": "a", "new": "b"}}}
        broken = [good, {"action": "update"}, {**good, "fields": {"name": "b"}}]
        other.write_text(json.dumps({**plan, "changes": broken}))
        assert main([*cli, "run", "--inventory", str(inventory), "--approved", str(other)]) == 2
        err = capsys.readouterr().err
        assert ("not a report this version of cmdb-connector can read (another version's, or edited?):\n"
                "  changes[1].table: Field required\n  changes[1].identity: Field required\n"
                "  changes[2].fields.name: Input should be a JSON object (got 'b')\n") in err
        assert main([*cli, "run", "--every", "1h", "--approved", str(ran)]) == 2
        assert "--approved makes the changes of one reviewed plan: not with --every" in capsys.readouterr().err
        assert main([*cli, "run", "--approved", str(tmp_path / "missing.json")]) == 2
        err = capsys.readouterr().err
        assert "missing.json: cannot read the report" in err and "Traceback" not in err


def test_the_run_takes_the_options_its_plan_was_made_with_and_a_plan_too_old_is_refused(tmp_path, monkeypatch,
                                                                                         capsys):
    _by_instance, inventory = tagged_inventory(tmp_path, [{}, {}])
    monkeypatch.setenv("CMDB_SERVICENOW__PASSWORD", PASSWORD)
    with ServiceNowStandIn(users={"svc": PASSWORD}) as server:
        config = configure(tmp_path, server.url)
        cli = ["--config", str(config)]
        assert main([*cli, "plan", "--inventory", str(inventory), "--force"]) == 0
        plan = latest(tmp_path)
        assert plan["options"] == {"force": True, "shard": None, "accounts": [], "retire_accounts": [],
                                   "inventory": str(inventory)}
        html = (tmp_path / "reports" / f"report-{plan['run_id']}.html").read_text()
        assert f"cmdb-connector run --approved report-{plan['run_id']}.json --force (in the reports folder)" in html
        reviewed = tmp_path / "reviewed.json"
        reviewed.write_text(json.dumps(plan))
        capsys.readouterr()
        writes = server.writes()
        assert main([*cli, "run", "--inventory", str(inventory), "--approved", str(reviewed)]) == 2
        err = capsys.readouterr().err
        assert (f"{reviewed}: the plan was made with --force, this run with none. A run's guards and scope are those "
                "of its options: give it the plan's") in err and "Traceback" not in err
        assert server.writes() == writes

        # the plan made three days and more ago (reconcile.approval_max_age_hours, 72 by default)
        stale = tmp_path / "stale.json"
        stale.write_text(json.dumps({**plan, "finished_at": "2026-01-01T00:00:00+00:00"}))
        assert main([*cli, "run", "--inventory", str(inventory), "--force", "--approved", str(stale)]) == 2
        assert "hours old: reconcile.approval_max_age_hours is 72. Review a new plan" in capsys.readouterr().err
        assert server.writes() == writes

        assert main([*cli, "run", "--inventory", str(inventory), "--force", "--approved", str(reviewed)]) == 0
        made = latest(tmp_path)
        assert made["approval"]["kept"] == len(plan["changes"]) and made["approval"]["held"] == 0
        assert len(vms(server)) == 2 and made["options"]["force"] is True
