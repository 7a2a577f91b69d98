"""Reference fields looked up at run time (a mapping's ``lookup``), against the stand-in over HTTP:
an owner's e-mail address in a tag becomes the sys_id of that user; what names no one, or several, is
left as it is and named; nothing a tag holds can widen the query."""

from __future__ import annotations

import shutil
from collections import Counter
from urllib.parse import unquote_plus

from connector.inventory import write_inventory
from connector.mapping.load import builtin_mappings_dir
from connector.run import run_pipeline
from connector.sandbox.servicenow import ServiceNowStandIn
from connector.sandbox.synthetic import synthetic_inventory
from connector.settings import load_settings

PASSWORD = "lookup-password"
VM = "cmdb_ci_vm_instance"
OWNER = 'owned_by = { tag = "Owner", lookup = "sys_user.email", known_when = "Tags[?Key==\'Owner\']" }\n'
TEAM = ('support_group = { tag = "Team", lookup = { table = "sys_user_group", field = "name", '
        'where = "active=true" } }\n')


def mappings_with(tmp_path, *lines: str):
    folder = tmp_path / "mappings"
    shutil.copytree(builtin_mappings_dir(), folder, ignore=shutil.ignore_patterns("__*"))
    path = folder / f"{VM}.toml"
    path.write_text(path.read_text().replace("[fields]\n", "[fields]\n" + "".join(lines), 1))
    return folder


def settings_for(server, tmp_path, folder, writer: str = "table"):
    return load_settings(None, {"aws": {"external_id": "not-used-here"},
                                "servicenow": {"instance_url": server.url, "username": "svc", "password": PASSWORD,
                                               "workers": 4, "writer": writer},
                                "reconcile": {"mappings_dir": str(folder)},
                                "report": {"output_dir": str(tmp_path / "reports")}})


def tagged_inventory(tmp_path, tags: list[dict[str, str]]):
    """One account, an instance per entry of ``tags``, each with those tags (besides its Name)."""
    inventory = synthetic_inventory(accounts=1, vpcs=1, subnets=1, instances=len(tags))
    records = [r for r in inventory.records if r.source == "ec2:instance"]
    for record, extra in zip(records, tags):
        record.resource["Tags"] += [{"Key": k, "Value": v} for k, v in extra.items()]
    path = tmp_path / "inventory.jsonl"
    write_inventory(inventory, path)
    return {r.resource["InstanceId"]: extra for r, extra in zip(records, tags)}, path


def vms(server) -> dict[str, dict[str, str]]:
    return {r["object_id"]: r for r in server.store.rows(VM)}


def add(server, table: str, **values) -> str:
    return server.store.insert(table, values, "admin")["sys_id"]


def test_owners_and_groups_are_looked_up_and_what_is_not_one_record_is_left_as_it_is(tmp_path):
    owners = [{"Owner": "Jane@Example.com"}, {"Owner": "bob@example.com"}, {"Owner": "nobody@example.com"},
              {"Owner": "x^NQactive=true"}, {"Team": "Ops, EU"}, {"Team": "Platform"}, {}]
    by_instance, path = tagged_inventory(tmp_path, owners)
    ids = list(by_instance)
    with ServiceNowStandIn(users={"svc": PASSWORD}) as server:
        jane = add(server, "sys_user", user_name="jane", email="jane@example.com", active="true")
        add(server, "sys_user", user_name="bob", email="bob@example.com", active="true")
        add(server, "sys_user", user_name="bob.old", email="bob@example.com", active="false")
        ops = add(server, "sys_user_group", name="Ops, EU", active="true")
        platform = add(server, "sys_user_group", name="Platform", active="true")
        add(server, "sys_user_group", name="Platform", active="false")  # the where leaves it out
        settings = settings_for(server, tmp_path, mappings_with(tmp_path, OWNER, TEAM))

        outcome = run_pipeline(settings, inventory_file=path)
        assert outcome.exit_code == 0, outcome.report["errors"]
        found = vms(server)
        assert found[ids[0]]["owned_by"] == jane  # compared without case, as the instance compares
        assert [found[i]["owned_by"] for i in ids[1:4]] == ["", "", ""]  # several, none, never asked: none set
        assert (found[ids[4]]["support_group"], found[ids[5]]["support_group"]) == (ops, platform)
        warnings = "\n".join(outcome.report["warnings"])
        assert ("cmdb_ci_vm_instance.owned_by: 1 CI(s) whose value names several records of sys_user.email "
                "(e.g. 'bob@example.com'") in warnings
        assert "owned_by: 1 CI(s) whose value names no record of sys_user.email (e.g. 'nobody@example.com'" in warnings
        assert "owned_by: 1 CI(s) whose value holds ^, which an encoded query cannot carry" in warnings
        assert sorted((u["identity"].rsplit("/", 1)[1], u["reason"]) for u in outcome.report["unresolved_lookups"]) == [
            (ids[1], "names several records"), (ids[2], "names no record"), (ids[3], "holds ^: not asked")]
        page = outcome.report_path.with_suffix(".html").read_text()
        assert "<h2>Lookups not resolved (3)</h2>" in page and "&#x27;nobody@example.com&#x27; names no record" in page
        # no query carried what a tag held beyond a value: ^ never reached the instance
        assert not [q for q in map(unquote_plus, server.reads) if "NQ" in q]
        assert [q for q in map(unquote_plus, server.reads) if "/table/sys_user_group?" in q and "Ops, EU" in q]

        # a rerun writes nothing; a value set by hand where the tag names no one stays
        by_hand = add(server, "sys_user", user_name="carol", email="carol@example.com", active="true")
        server.store.update(VM, found[ids[2]]["sys_id"], {"owned_by": by_hand}, "admin")
        before = Counter(server.stats)
        outcome = run_pipeline(settings, inventory_file=path)
        assert outcome.exit_code == 0 and outcome.report["changes"] == []
        assert vms(server)[ids[2]]["owned_by"] == by_hand
        assert not [k for k in Counter(server.stats) - before if k.split(" ")[0] in ("POST", "PATCH", "batch")]

        # the user who was missing is added: the next run sets it, and a plan predicted it
        nobody = add(server, "sys_user", user_name="nobody", email="nobody@example.com", active="true")
        planned = run_pipeline(settings, mode="plan", inventory_file=path).report["changes"]
        outcome = run_pipeline(settings, inventory_file=path)
        def writes(changes):  # last_discovered is each run's own time: a second apart, it differs
            return [(c["identity"], {k: v for k, v in c["fields"].items() if k != "last_discovered"}) for c in changes]

        assert writes(planned) == writes(outcome.report["changes"])
        assert [c["fields"]["owned_by"] for c in outcome.report["changes"]] == [{"old": by_hand, "new": nobody}]


def test_a_lookup_field_the_table_lacks_reads_nothing_and_leaves_the_field(tmp_path):
    """The instance would drop the condition on a field it lacks and answer with every user."""
    _by_instance, path = tagged_inventory(tmp_path, [{"Owner": "jane@example.com"}])
    with ServiceNowStandIn(users={"svc": PASSWORD}) as server:
        add(server, "sys_user", user_name="jane", email="jane@example.com", active="true")
        settings = settings_for(server, tmp_path, mappings_with(tmp_path, OWNER.replace("sys_user.email", "sys_user.emial")))
        outcome = run_pipeline(settings, inventory_file=path)
        assert outcome.exit_code == 0
        assert [r["owned_by"] for r in server.store.rows(VM)] == [""]
        assert any("sys_user not read for the lookups in sys_user.emial" in w and "has no field emial" in w
                   for w in outcome.report["warnings"])
        assert not [q for q in server.reads if "/table/sys_user?" in q]


def test_a_field_the_table_lacks_in_a_lookups_where_reads_nothing_and_leaves_the_field(tmp_path):
    """The instance would drop "activ=true" and answer with the inactive group too: the CI would get it."""
    _by_instance, path = tagged_inventory(tmp_path, [{"Team": "Platform"}])
    with ServiceNowStandIn(users={"svc": PASSWORD}) as server:
        add(server, "sys_user_group", name="Platform", active="false")
        misspelled = TEAM.replace('where = "active=true"', 'where = "nameISNOTEMPTY^activ=true"')
        settings = settings_for(server, tmp_path, mappings_with(tmp_path, misspelled))
        outcome = run_pipeline(settings, inventory_file=path)
        assert outcome.exit_code == 0
        assert [r["support_group"] for r in server.store.rows(VM)] == [""]
        assert any("sys_user_group not read for the lookups in sys_user_group.name (nameISNOTEMPTY^activ=true)" in w
                   and "has no field activ (sys_dictionary), which the lookup's where names" in w
                   for w in outcome.report["warnings"]), outcome.report["warnings"]
        assert not [q for q in server.reads if "/table/sys_user_group?" in q]
        # spelled right, the same group is not taken: it is inactive
        settings = settings_for(server, tmp_path, mappings_with(tmp_path / "right", TEAM))
        outcome = run_pipeline(settings, inventory_file=path)
        assert [r["support_group"] for r in server.store.rows(VM)] == [""]
        assert [q for q in server.reads if "/table/sys_user_group?" in q]
        assert not [w for w in outcome.report["warnings"] if "has no field" in w]


def test_through_ire_the_looked_up_sys_id_is_written_and_a_rerun_writes_nothing(tmp_path):
    by_instance, path = tagged_inventory(tmp_path, [{"Owner": "jane@example.com"}, {}])
    with ServiceNowStandIn(users={"svc": PASSWORD}) as server:
        jane = add(server, "sys_user", user_name="jane", email="jane@example.com", active="true")
        settings = settings_for(server, tmp_path, mappings_with(tmp_path, OWNER), writer="ire")
        assert run_pipeline(settings, inventory_file=path).exit_code == 0
        assert [vms(server)[i]["owned_by"] for i in by_instance] == [jane, ""]
        outcome = run_pipeline(settings, inventory_file=path)
        assert outcome.exit_code == 0 and outcome.report["changes"] == []
