"""plan is pure: plain data in, plain data out."""

from __future__ import annotations

from dataclasses import replace

import pytest

from connector.models import OK, DENIED, DesiredCI, ExistingCI, ExistingRelation, MappingProblem, RelationRef, Scope
from connector.reconcile.plan import PlanOptions, TablePolicy, plan_changes

DS = "AWS CMDB Connector"
A, R = "111122223333", "us-east-1"
VM = "cmdb_ci_vm_instance"
DC = "cmdb_ci_aws_datacenter"
DC_ID = f"arn:aws:ec2:{R}:{A}:region/{R}"
RETIRE = {"install_status": "7", "operational_status": "6"}
REVIVE = {"install_status": "1", "operational_status": "1"}
POLICIES = {
    VM: TablePolicy(VM, "correlation_id", ("ec2:instance",), RETIRE, REVIVE, (("Hosted on::Hosts", DC, "parent"),)),
    DC: TablePolicy(DC, "correlation_id", ("ec2:region",), RETIRE, REVIVE),
}
OPTIONS = PlanOptions(DS)
SCOPES = [Scope(A, R, "ec2:instance", OK), Scope(A, R, "ec2:region", OK)]
REL_TYPES = {"Hosted on::Hosts": "type-hosted"}


def vm_id(n: int, account: str = A) -> str:
    return f"arn:aws:ec2:{R}:{account}:instance/i-{n}"


def desired_vm(n: int, name: str | None = None, account: str = A, **fields) -> DesiredCI:
    values = {"name": name or f"vm{n}", "object_id": f"i-{n}", "correlation_id": vm_id(n, account), **fields}
    return DesiredCI(VM, vm_id(n, account), values, (RelationRef("Hosted on::Hosts", DC, f"arn:aws:ec2:{R}:{account}:region/{R}"),),
                     (account, R, "ec2:instance"))


def existing_vm(n: int, name: str | None = None, account: str = A, sys_id: str | None = None, **fields) -> ExistingCI:
    values = {"sys_id": sys_id or f"s{n}", "sys_class_name": VM, "discovery_source": DS, "name": name or f"vm{n}",
              "object_id": f"i-{n}", "correlation_id": vm_id(n, account), "install_status": "1",
              "operational_status": "1", **fields}
    return ExistingCI(VM, values["sys_id"], values)


def plan(desired, existing, scopes=SCOPES, relations=(), options=OPTIONS, problems=()):
    by_table: dict[str, list] = {}
    for ci in existing:
        by_table.setdefault(ci.table, []).append(ci)
    return plan_changes(list(desired), by_table, list(scopes), list(problems), list(relations), REL_TYPES, POLICIES, options)


def actions(p) -> list[tuple[str, str]]:
    return sorted((c.action, c.identity) for c in p.changes)


def test_create_carries_all_fields_stamp_and_live_status():
    p = plan([desired_vm(1)], [])
    (change,) = p.changes
    assert change.action == "create"
    assert change.payload == {"name": "vm1", "object_id": "i-1", "correlation_id": vm_id(1),
                              "discovery_source": DS, "install_status": "1", "operational_status": "1"}


def test_unchanged_plans_zero_writes():
    p = plan([desired_vm(1)], [existing_vm(1)])
    assert p.changes == [] and p.unchanged[VM] == 1


def test_update_has_only_changed_fields_with_old_and_new():
    p = plan([desired_vm(1, name="renamed")], [existing_vm(1)])
    (change,) = p.changes
    assert (change.action, change.sys_id, change.diff) == ("update", "s1", {"name": ("vm1", "renamed")})


def test_string_form_normalisation_none_equals_empty():
    p = plan([desired_vm(1, ip_address=None)], [existing_vm(1, ip_address="")])
    assert p.changes == []
    p = plan([desired_vm(1, ip_address=None)], [existing_vm(1, ip_address="10.0.0.1")])
    assert p.changes[0].diff == {"ip_address": ("10.0.0.1", "")}


def test_string_form_normalisation_of_numbers_and_booleans():
    # Values a transform left as numbers compare on ServiceNow's string form,
    # both when nothing changed and in the diff of what did.
    assert plan([desired_vm(1, cpus=8, virtual=True)], [existing_vm(1, cpus="8", virtual="true")]).changes == []
    (change,) = plan([desired_vm(1, cpus=8)], [existing_vm(1, cpus="4")]).changes
    assert change.diff == {"cpus": ("4", "8")}
    (change,) = plan([desired_vm(1, ip_address="10.0.0.1")], [existing_vm(1, ip_address=None)]).changes
    assert change.diff == {"ip_address": ("", "10.0.0.1")}


def test_gone_from_an_ok_scope_is_retired():
    existing = [existing_vm(1), existing_vm(2), existing_vm(3), existing_vm(4)]
    p = plan([desired_vm(1)], existing, options=PlanOptions(DS, max_retire_fraction=0.75))
    assert actions(p) == [("retire", vm_id(2)), ("retire", vm_id(3)), ("retire", vm_id(4))]
    assert p.guards == []
    # 3 of 4 is over 50%: the guard holds them all
    held = plan([desired_vm(1)], existing, options=PlanOptions(DS, max_retire_fraction=0.5))
    assert "would retire 3 of 4 owned CIs (75%)" in held.guards[0]
    assert held.changes == []


def test_retire_sets_lifecycle_values():
    p = plan([desired_vm(1), desired_vm(2), desired_vm(3)], [existing_vm(n) for n in (1, 2, 3, 4)])
    (change,) = p.changes
    assert change.action == "retire" and change.sys_id == "s4"
    assert change.diff == {"install_status": ("1", "7"), "operational_status": ("1", "6")}


def test_guard_yields_to_force():
    desired, existing = [desired_vm(1)], [existing_vm(n) for n in (1, 2, 3)]
    assert plan(desired, existing).guards
    forced = plan(desired, existing, options=PlanOptions(DS, force=True))
    assert forced.guards == [] and len([c for c in forced.changes if c.action == "retire"]) == 2


def test_retire_switched_off():
    p = plan([desired_vm(n) for n in (1, 2, 3)], [existing_vm(n) for n in (1, 2, 3, 4)],
             options=PlanOptions(DS, retire=False))
    assert p.changes == [] and "reconcile.retire = false" in p.guards[0]


def test_unknown_is_not_empty_denied_scope_retires_nothing():
    other = "444455556666"
    existing = [existing_vm(n, account=other, sys_id=f"o{n}") for n in (1, 2)] + [existing_vm(n) for n in (1, 2, 3, 4)]
    scopes = SCOPES + [Scope(other, R, "ec2:instance", DENIED, "AccessDenied")]
    p = plan([desired_vm(n) for n in (1, 2, 3)], existing, scopes=scopes)
    assert actions(p) == [("retire", vm_id(4))]


def test_scope_absent_from_run_retires_nothing():
    other = "444455556666"
    p = plan([], [existing_vm(1, account=other)], scopes=SCOPES)
    assert p.changes == []


def test_mapping_problem_makes_its_scope_unknown():
    p = plan([desired_vm(n) for n in (1, 2, 3)], [existing_vm(n) for n in (1, 2, 3, 4)],
             problems=[MappingProblem((A, R, "ec2:instance"), VM, "bad item")])
    assert p.changes == []


def test_client_side_recheck_of_every_retire():
    """A query that dropped its conditions returns CIs we do not own: none is retired."""
    foreign = [
        existing_vm(5, sys_id="x5", discovery_source="ServiceNow Discovery"),
        existing_vm(6, sys_id="x6", sys_class_name="cmdb_ci_ec2_instance"),
        existing_vm(7, sys_id="x7", correlation_id="vm-7-not-an-arn"),
    ]
    p = plan([desired_vm(n) for n in (1, 2, 3)], [existing_vm(n) for n in (1, 2, 3)] + foreign,
             options=PlanOptions(DS, force=True))
    assert p.changes == []


def test_revive_a_retired_ci_that_came_back():
    p = plan([desired_vm(1)], [existing_vm(1, install_status="7", operational_status="6")])
    (change,) = p.changes
    assert change.action == "revive"
    assert change.diff == {"install_status": ("7", "1"), "operational_status": ("6", "1")}


def test_already_retired_and_still_gone_is_unchanged():
    p = plan([], [existing_vm(1, install_status="7", operational_status="6")])
    assert p.changes == [] and p.unchanged[VM] == 1


def test_adopt_a_ci_made_by_another_source():
    discovered = ExistingCI(VM, "d1", {"sys_id": "d1", "sys_class_name": VM, "discovery_source": "ServiceNow",
                                       "object_id": "i-1", "correlation_id": "", "name": "vm1",
                                       "install_status": "1", "operational_status": "1"})
    p = plan([desired_vm(1)], [discovered])
    (change,) = p.changes
    assert change.action == "update" and change.sys_id == "d1" and change.note.startswith("adopted")
    assert change.diff == {"correlation_id": ("", vm_id(1)), "discovery_source": ("ServiceNow", DS)}


def test_a_ci_to_adopt_that_several_resources_match_by_object_id_is_adopted_by_none():
    # Every account's datacenter in a region has that region as object_id: one made by hand cannot be all of them.
    made_by_hand = ExistingCI(DC, "hand", {"sys_id": "hand", "sys_class_name": DC, "discovery_source": "", "name": R,
                                           "object_id": R, "correlation_id": "", "install_status": "1",
                                           "operational_status": "1"})
    other = "444455556666"
    theirs = DesiredCI(DC, f"arn:aws:ec2:{R}:{other}:region/{R}",
                       {"name": R, "object_id": R, "region": R, "correlation_id": f"arn:aws:ec2:{R}:{other}:region/{R}"},
                       (), (other, R, "ec2:region"))
    p = plan([desired_dc(), theirs], [made_by_hand], scopes=[*SCOPES, Scope(other, R, "ec2:region", OK)])
    assert actions(p) == sorted([("create", DC_ID), ("create", theirs.identity)])  # no update of "hand"
    assert p.warnings == [
        f"{DC}: 1 CI(s) without correlation_id match several resources by object_id (e.g. hand, for 2 resources such "
        f"as {DC_ID}): adopted by none, and each resource gets a CI of its own. Set such a CI's correlation_id to the "
        "identity of the resource it stands for, to have it adopted, or retire it."]
    alone = plan([desired_dc()], [made_by_hand])  # one resource only: adopted, as before
    assert [(c.action, c.sys_id) for c in alone.changes] == [("update", "hand")] and alone.warnings == []


def test_duplicates_are_reported_and_nothing_created():
    p = plan([desired_vm(1)], [existing_vm(1, sys_id="a"), existing_vm(1, sys_id="b")])
    assert p.changes == []
    assert p.duplicates == [{"table": VM, "identity": vm_id(1), "sys_ids": ["a", "b"]}]


def dc(sys_id="dc1") -> ExistingCI:
    return ExistingCI(DC, sys_id, {"sys_id": sys_id, "sys_class_name": DC, "discovery_source": DS,
                                   "correlation_id": DC_ID, "object_id": R, "name": R, "region": R,
                                   "install_status": "1", "operational_status": "1"})


def desired_dc() -> DesiredCI:
    return DesiredCI(DC, DC_ID, {"name": R, "object_id": R, "region": R, "correlation_id": DC_ID}, (), (A, R, "ec2:region"))


def test_relations_created_for_new_and_existing_ends():
    p = plan([desired_vm(1), desired_dc()], [dc()])
    (rel,) = p.relation_changes
    assert (rel.action, rel.type, rel.parent, rel.child) == ("create", "Hosted on::Hosts", (VM, vm_id(1)), (DC, DC_ID))


def test_existing_relation_is_unchanged():
    p = plan([desired_vm(1), desired_dc()], [dc(), existing_vm(1)],
             relations=[ExistingRelation("r1", "s1", "dc1", "type-hosted")])
    assert p.relation_changes == [] and p.relations_unchanged == 1


def test_stale_relation_of_a_present_ci_is_deleted():
    other_dc = ExistingCI(DC, "dc2", {**dc("dc2").fields, "correlation_id": f"arn:aws:ec2:{R}:{A}:region/old"})
    p = plan([desired_vm(1), desired_dc()], [dc(), other_dc, existing_vm(1)],
             relations=[ExistingRelation("r1", "s1", "dc1", "type-hosted"), ExistingRelation("r2", "s1", "dc2", "type-hosted")])
    assert [(r.action, r.sys_id) for r in p.relation_changes] == [("delete", "r2")]


def test_a_relation_the_item_could_not_tell_is_kept_and_the_others_still_planned():
    """The VM's item could not tell its datacenter (a mapping's known_when found nothing): the relation in
    the CMDB is kept, not deleted as stale; told, the same relation is deleted."""
    other_dc = ExistingCI(DC, "dc2", {**dc("dc2").fields, "correlation_id": f"arn:aws:ec2:{R}:{A}:region/old"})
    relations = [ExistingRelation("r2", "s1", "dc2", "type-hosted")]
    unknown = replace(desired_vm(1), relations=(), unknown_relations=frozenset({("Hosted on::Hosts", DC)}))
    p = plan([unknown, desired_dc()], [dc(), other_dc, existing_vm(1)], relations=relations)
    assert p.relation_changes == []
    told = replace(desired_vm(1), unknown_relations=frozenset({("Hosted on::Hosts", "cmdb_ci_other_class")}))
    p = plan([told, desired_dc()], [dc(), other_dc, existing_vm(1)], relations=relations)
    assert sorted((r.action, r.sys_id) for r in p.relation_changes) == [("create", None), ("delete", "r2")]


def test_a_value_the_item_does_not_know_is_written_by_a_create_and_never_over_a_cis():
    unknown_name = replace(desired_vm(1), fields={k: v for k, v in desired_vm(1).fields.items() if k != "name"},
                           create_only={"name": "stand-in name", "short_description": None,
                                        "operational_status": None})
    p = plan([unknown_name], [existing_vm(1, name="the CMDB's name")])
    assert p.changes == [] and p.unchanged[VM] == 1
    (create,) = plan([unknown_name], []).changes
    assert create.diff["name"] == ("", "stand-in name") and "short_description" not in create.diff
    assert create.diff["operational_status"] == ("", "1")  # none known: the lifecycle's live value, not none
    known = replace(unknown_name, fields={**unknown_name.fields, "name": "from AWS"})
    (create,) = plan([known], []).changes  # a value the item knows wins over its create-only one
    assert create.diff["name"] == ("", "from AWS")


def test_relations_of_a_type_no_mapping_names_are_never_deleted():
    """The relations are asked for by type name (type.name), a dot-walk the instance may drop: then
    relations of every type come back. Only those of the types plan knows (rel_types) are managed."""
    p = plan([desired_vm(1), desired_dc()], [dc(), existing_vm(1)],
             relations=[ExistingRelation("r1", "s1", "dc1", "type-hosted"),
                        ExistingRelation("r2", "s1", "dc1", "type-depends-on")])  # both ends ours, another type
    assert p.relation_changes == [] and p.relations_unchanged == 1


def test_relations_of_unmanaged_cis_or_absent_declarers_are_kept():
    p = plan([desired_dc()], [dc()],
             relations=[ExistingRelation("r1", "s1", "dc1", "type-hosted"),          # s1 absent from this run
                        ExistingRelation("r2", "foreign", "dc1", "type-hosted")])   # parent not ours
    assert p.relation_changes == []


def test_a_class_that_could_not_be_read_is_unknown_not_empty():
    """existing[DC] is None (the instance refused the class): no datacenter is created, none retired, and no
    relation to one is created or deleted, even with --force; the other classes are planned as usual."""
    relations = [ExistingRelation("r1", "s1", "dc1", "type-hosted")]
    for options in (OPTIONS, PlanOptions(DS, force=True)):
        desired = [*(desired_vm(n) for n in (1, 2, 3, 4, 6)), desired_dc()]
        p = plan_changes(desired, {VM: [existing_vm(n) for n in range(1, 6)], DC: None},
                         SCOPES, [], relations, REL_TYPES, POLICIES, options)
        assert actions(p) == [("create", vm_id(6)), ("retire", vm_id(5))]
        assert p.relation_changes == [] and (DC, DC_ID) in p.held
        assert p.guards == [f"{DC}: its CIs could not be read from ServiceNow (see errors): none of its 1 CI(s) written, "
                            "none retired, and their relations and tags left as they are."]
    # an empty class is not an unknown one: there the datacenter is created
    assert ("create", DC_ID) in actions(plan_changes([desired_dc()], {DC: []}, SCOPES, [], [], REL_TYPES, POLICIES, OPTIONS))


def test_the_guard_holds_relation_deletions_of_a_class_that_lost_most_of_them():
    """A [[relations]] identity that finds nothing (a typo in a template) would delete them all."""
    gone_dc = f"arn:aws:ec2:{R}:{A}:region/typo"  # every VM now points at a datacenter that is nowhere
    vms = [replace(desired_vm(n), relations=(RelationRef("Hosted on::Hosts", DC, gone_dc),)) for n in range(20)]
    existing = [dc(), *(existing_vm(n) for n in range(20))]
    links = [ExistingRelation(f"r{n}", f"s{n}", "dc1", "type-hosted") for n in range(20)]
    held = plan([*vms, desired_dc()], existing, relations=links)
    assert held.relation_changes == []  # nothing deleted, nothing to create (the target is not found)
    assert held.guards == [f"{VM}: would delete 20 of its 20 'Hosted on::Hosts' relations (100%), over "
                           "reconcile.max_retire_fraction = 25%; none of them deleted. Check the [[relations]] of its "
                           "mapping (an identity that finds no CI?) and the warnings, then rerun with --force if this "
                           "is right."]
    assert held.warnings == [f"{VM}: Hosted on::Hosts target {DC} not found for 20 CI(s), e.g. {vm_id(0)} -> {gone_dc}"]
    forced = plan([*vms, desired_dc()], existing, relations=links, options=PlanOptions(DS, force=True))
    assert sorted(r.sys_id for r in forced.relation_changes) == sorted(f"r{n}" for n in range(20))
    assert forced.guards == []


def test_a_changed_identity_holds_back_the_creates_with_the_retires():
    """A correlation_id template edited in a mapping: every CI would be created again and the old ones retired."""
    existing = [existing_vm(n) for n in range(20)]
    moved = [replace(desired_vm(n), identity=vm_id(n) + "/v2", fields={**desired_vm(n).fields, "correlation_id": vm_id(n) + "/v2"})
             for n in range(20)]
    held = plan([*moved, desired_dc()], [dc(), *existing])
    assert [c for c in held.changes if c.table == VM] == [] and held.relation_changes == []
    retire_guard, create_guard = held.guards
    assert retire_guard.startswith(f"{VM}: would retire 20 of 20 owned CIs")
    assert create_guard.startswith(f"{VM}: would create 20 CIs for resources its owned CIs already hold under "
                                   "another identity (same object_id)")
    assert held.held == {(VM, ci.identity) for ci in moved}
    forced = plan([*moved, desired_dc()], [dc(), *existing], options=PlanOptions(DS, force=True))
    assert sorted(c.action for c in forced.changes).count("create") == 20 and forced.guards == []
    assert len(forced.relation_changes) == 20 and forced.held == set()


def test_a_changed_identity_creates_no_duplicates_with_retire_switched_off_either():
    existing = [existing_vm(n) for n in range(20)]
    moved = [replace(desired_vm(n), identity=vm_id(n) + "/v2", fields={**desired_vm(n).fields, "correlation_id": vm_id(n) + "/v2"})
             for n in range(20)]
    p = plan([*moved, desired_dc()], [dc(), *existing], options=PlanOptions(DS, retire=False))
    assert p.changes == [] and len(p.held) == 20
    assert p.guards[0] == f"{VM}: 20 CI(s) gone from AWS not retired: reconcile.retire = false"
    assert p.guards[1].startswith(f"{VM}: would create 20 CIs for resources its owned CIs already hold")


def test_creates_in_another_account_with_the_object_ids_of_unmatched_cis_are_no_twins():
    # object_id is not unique across accounts (a Lambda function's is its name): account A was not collected in
    # this run, so its CIs match nothing, and a new account deploys the same 20 names. Nothing is a twin.
    other = "444455556666"
    scopes = [Scope(A, R, "ec2:instance", DENIED), Scope(A, R, "ec2:region", OK), Scope(other, R, "ec2:instance", OK)]
    p = plan([*(desired_vm(n, account=other) for n in range(20)), desired_dc()],
             [dc(), *(existing_vm(n) for n in range(20))], scopes=scopes)
    assert sorted(c.action for c in p.changes if c.table == VM) == ["create"] * 20
    assert p.guards == [] and p.held == set()


def test_new_resources_replacing_most_of_a_class_are_created_while_the_retires_wait():
    # an instance refresh: 20 instances gone, 20 new ones (other instance ids): nothing to duplicate
    p = plan([*(desired_vm(n) for n in range(100, 120)), desired_dc()], [dc(), *(existing_vm(n) for n in range(20))])
    assert sorted(c.action for c in p.changes if c.table == VM) == ["create"] * 20 and p.held == set()
    [retire_guard] = p.guards
    assert retire_guard.startswith(f"{VM}: would retire 20 of 20 owned CIs")


def test_a_few_creates_beside_held_retires_still_go_ahead():
    # 3 of 4 instances replaced: the retires wait for --force, the 3 new instances (not over 10) are created
    p = plan([desired_vm(0), *(desired_vm(n) for n in range(10, 13)), desired_dc()], [dc(), *(existing_vm(n) for n in range(4))])
    assert sorted(c.action for c in p.changes if c.table == VM) == ["create"] * 3
    assert len(p.guards) == 1 and p.held == set()


def test_relations_to_a_class_whose_creates_are_held_are_neither_created_nor_deleted():
    accounts = [f"1111222233{n:02d}" for n in range(12)]
    scopes = [Scope(a, R, source, OK) for a in accounts for source in ("ec2:instance", "ec2:region")]
    old_dc = {a: f"arn:aws:ec2:{R}:{a}:region/{R}" for a in accounts}
    dcs = [ExistingCI(DC, f"dc-{a}", {**dc(f"dc-{a}").fields, "correlation_id": old_dc[a]}) for a in accounts]
    new_dcs = [DesiredCI(DC, old_dc[a] + "/v2", {**desired_dc().fields, "correlation_id": old_dc[a] + "/v2"}, (),
                         (a, R, "ec2:region")) for a in accounts]
    vms = [replace(desired_vm(n, account=a), relations=(RelationRef("Hosted on::Hosts", DC, old_dc[a] + "/v2"),))
           for n, a in enumerate(accounts)]
    existing = [*dcs, *(existing_vm(n, account=a) for n, a in enumerate(accounts))]
    links = [ExistingRelation(f"r{n}", f"s{n}", f"dc-{a}", "type-hosted") for n, a in enumerate(accounts)]
    p = plan([*vms, *new_dcs], existing, scopes=scopes, relations=links)
    assert p.changes == [] and p.relation_changes == []  # the VMs keep their links to the old datacenters
    retire_guard, create_guard = p.guards  # and no relation deletion even came near its own guard
    assert retire_guard.startswith(f"{DC}: would retire 12 of 12") and create_guard.startswith(f"{DC}: would create 12 CIs for resources")
    assert p.warnings == []  # a held target is not a missing one


def test_a_field_emptied_on_most_cis_at_once_is_left_as_it_is_and_the_rest_still_updated():
    """A [fields] path that finds nothing (ip_address mistyped) would wipe the field on every CI of the class."""
    existing = [existing_vm(n, ip_address=f"10.0.0.{n}") for n in range(20)]
    renamed = [desired_vm(n, name="renamed" if n < 2 else None, ip_address=None) for n in range(20)]  # the path found nothing
    held = plan([*renamed, desired_dc()], [dc(), *existing])
    assert [(c.action, c.identity, c.diff) for c in held.changes] == [
        ("update", vm_id(n), {"name": (f"vm{n}", "renamed")}) for n in range(2)]  # the name goes on
    assert held.guards == [f"{VM}.ip_address: would empty it on 20 of 20 CIs (100%), over "
                           "reconcile.max_retire_fraction = 25%; left as it is. Check the [fields] entry of ip_address "
                           "in its mapping (a path that finds nothing?), then rerun with --force if this is right."]
    assert held.unchanged[VM] == 18  # nothing left to write for them
    forced = plan([*renamed, desired_dc()], [dc(), *existing], options=PlanOptions(DS, force=True))
    assert len(forced.changes) == 20 and all(c.diff["ip_address"] == (c.diff["ip_address"][0], "") for c in forced.changes)


def test_a_field_emptied_on_a_few_cis_is_emptied():
    existing = [existing_vm(n, ip_address=f"10.0.0.{n}") for n in range(60)]
    desired = [desired_vm(n, ip_address=None if n < 11 else f"10.0.0.{n}") for n in range(60)]
    p = plan([*desired, desired_dc()], [dc(), *existing])  # 11 of 60: over the floor, within the share
    assert p.guards == [] and sorted(c.identity for c in p.changes) == sorted(vm_id(n) for n in range(11))


def test_a_relation_type_missing_from_the_instance_is_one_warning_with_its_count():
    p = plan_changes([desired_vm(1), desired_vm(2), desired_dc()], {DC: [dc()]}, SCOPES, [], [], {}, POLICIES, OPTIONS)
    assert p.relation_changes == []
    assert p.warnings == ["relation type 'Hosted on::Hosts' is not in cmdb_rel_type: 2 relation(s) left unmanaged "
                          "(`cmdb-connector check-access --servicenow-only` names the nearest type the instance has)"]


def test_a_few_relation_deletions_or_a_small_share_pass_the_guard():
    moved = f"arn:aws:ec2:{R}:{A}:region/other"
    other = ExistingCI(DC, "dc2", {**dc("dc2").fields, "correlation_id": moved})
    dcs = [desired_dc(), DesiredCI(DC, moved, {**desired_dc().fields, "correlation_id": moved}, (), (A, R, "ec2:region"))]

    def vm(n: int, target: str) -> DesiredCI:
        return replace(desired_vm(n), relations=(RelationRef("Hosted on::Hosts", DC, target),))
    # 3 of 4 moved: over the share, but no more than the floor of 10
    few = plan([*(vm(n, moved if n < 3 else DC_ID) for n in range(4)), *dcs], [dc(), other, *(existing_vm(n) for n in range(4))],
               relations=[ExistingRelation(f"r{n}", f"s{n}", "dc1", "type-hosted") for n in range(4)])
    assert sorted(r.sys_id for r in few.relation_changes if r.action == "delete") == ["r0", "r1", "r2"] and few.guards == []
    # 11 of 60 moved: over the floor, within the share
    share = plan([*(vm(n, moved if n < 11 else DC_ID) for n in range(60)), *dcs],
                 [dc(), other, *(existing_vm(n) for n in range(60))],
                 relations=[ExistingRelation(f"r{n}", f"s{n}", "dc1", "type-hosted") for n in range(60)])
    assert len([r for r in share.relation_changes if r.action == "delete"]) == 11 and share.guards == []


# -- tags (cmdb_key_value) ------------------------------------------------------

from connector.models import ExistingKeyValue  # noqa: E402


def tagged_vm(n: int, tags: dict[str, str], account: str = A) -> DesiredCI:
    return replace(desired_vm(n, account=account), tags=tags)


def plan_tags(desired, existing, key_values, scopes=SCOPES):
    by_table: dict[str, list] = {}
    for ci in existing:
        by_table.setdefault(ci.table, []).append(ci)
    return plan_changes(list(desired), by_table, list(scopes), [], [], REL_TYPES, POLICIES, OPTIONS, list(key_values))


def tag_actions(p) -> list[tuple]:
    return sorted((c.action, c.ci[1], c.key, c.old, c.new, c.sys_id) for c in p.key_value_changes)


def test_tags_create_update_delete_and_unchanged():
    rows = [ExistingKeyValue("kv1", "s1", "env", "prod"), ExistingKeyValue("kv2", "s1", "team", "blue"),
            ExistingKeyValue("kv3", "s1", "old", "x")]
    p = plan_tags([tagged_vm(1, {"env": "prod", "team": "red", "new": "1"})], [existing_vm(1)], rows)
    assert tag_actions(p) == [("create", vm_id(1), "new", "", "1", None),
                              ("delete", vm_id(1), "old", "x", "", "kv3"),
                              ("update", vm_id(1), "team", "blue", "red", "kv2")]
    assert p.key_values_unchanged == 1
    assert p.changes == []  # the CI itself is unchanged


def test_tags_of_a_new_ci_are_created_with_it():
    p = plan_tags([tagged_vm(1, {"env": "prod"})], [], [])
    assert [c.action for c in p.changes] == ["create"]
    assert tag_actions(p) == [("create", vm_id(1), "env", "", "prod", None)]


def test_no_tag_removed_when_the_scope_was_not_collected():
    rows = [ExistingKeyValue("kv1", "s1", "env", "prod")]
    denied = [Scope(A, R, "ec2:instance", DENIED), Scope(A, R, "ec2:region", OK)]
    p = plan_tags([tagged_vm(1, {})], [existing_vm(1)], rows, scopes=denied)
    assert p.key_value_changes == []
    p = plan_tags([tagged_vm(1, {})], [existing_vm(1)], rows)  # collected ok: no tags left in AWS
    assert tag_actions(p) == [("delete", vm_id(1), "env", "prod", "", "kv1")]


def test_tags_of_cis_not_ours_or_not_in_the_run_are_left_alone():
    foreign = existing_vm(2, discovery_source="ServiceNow")
    rows = [ExistingKeyValue("kv1", "s2", "env", "prod"),   # a foreign CI's row, however the query ran
            ExistingKeyValue("kv2", "s3", "env", "prod")]   # an owned CI absent from this run
    p = plan_tags([tagged_vm(1, {})], [existing_vm(1), foreign, existing_vm(3)], rows)
    assert p.key_value_changes == []


def test_tags_not_managed_plan_nothing_and_an_adopted_ci_gets_its_tags_each_looked_for_first():
    rows = [ExistingKeyValue("kv1", "s1", "env", "prod")]
    p = plan_tags([desired_vm(1)], [existing_vm(1)], rows)  # tags None: the class does not map them
    assert p.key_value_changes == [] and p.key_values_unchanged == 0
    adopted = existing_vm(1, discovery_source="ServiceNow")
    # its rows, another source's until now, are not read as ours (kv1 here, however the query ran)
    p = plan_tags([tagged_vm(1, {"env": "prod", "team": "red"})], [adopted], rows)
    assert [c.note for c in p.changes] == ["adopted: CI of another source, now owned"]
    assert tag_actions(p) == [("create", vm_id(1), "env", "", "prod", None),
                              ("create", vm_id(1), "team", "", "red", None)]
    assert all(c.check_first for c in p.key_value_changes)  # each looked for first: none made twice
    owned = plan_tags([tagged_vm(1, {"env": "prod", "team": "red"})], [existing_vm(1)], rows)
    assert [(c.action, c.key, c.check_first) for c in owned.key_value_changes] == [("create", "team", False)]


def test_tags_of_a_duplicated_resource_are_not_written():
    p = plan_tags([tagged_vm(1, {"env": "prod"})], [existing_vm(1), existing_vm(1, sys_id="s1b")], [])
    assert p.duplicates and p.key_value_changes == []


def test_a_second_row_for_one_tag_is_removed_and_the_first_kept():
    rows = [ExistingKeyValue("kv1", "s1", "env", "old"), ExistingKeyValue("kv2", "s1", "env", "prod"),
            ExistingKeyValue("kv3", "s1", "team", "c"), ExistingKeyValue("kv4", "s1", "team", "c")]
    p = plan_tags([tagged_vm(1, {"env": "prod", "team": "c"})], [existing_vm(1)], rows)
    assert tag_actions(p) == [("delete", vm_id(1), "env", "prod", "", "kv2"),
                              ("delete", vm_id(1), "team", "c", "", "kv4"),
                              ("update", vm_id(1), "env", "old", "prod", "kv1")]
    denied = [Scope(A, R, "ec2:instance", DENIED), Scope(A, R, "ec2:region", OK)]
    p = plan_tags([tagged_vm(1, {"env": "prod", "team": "c"})], [existing_vm(1)], rows, scopes=denied)
    assert [c.action for c in p.key_value_changes] == ["update"]  # no delete for a scope not collected in full


def test_tag_guard_stops_a_run_that_would_empty_a_class_of_its_tags():
    vms = [existing_vm(n) for n in range(12)]
    rows = [ExistingKeyValue(f"kv{n}", f"s{n}", "env", "prod") for n in range(12)]
    gone = [tagged_vm(n, {}) for n in range(12)]  # e.g. a [tags] path that finds nothing
    p = plan_tags(gone, vms, rows)
    assert p.key_value_changes == []
    assert p.guards == [f"{VM}: would delete 12 of its 12 tag rows (100%), over reconcile.max_retire_fraction = 25%; "
                        "no tag removed in this table. Check its [tags] mapping and the collection, then rerun with "
                        "--force if this is right."]
    forced = plan_changes(gone, {VM: vms}, SCOPES, [], [], REL_TYPES, POLICIES, PlanOptions(DS, force=True), rows)
    assert sorted(c.sys_id for c in forced.key_value_changes) == sorted(f"kv{n}" for n in range(12)) and not forced.guards
    # an everyday change: a tag removed from a few resources goes through
    some = [tagged_vm(n, {} if n < 3 else {"env": "prod"}) for n in range(12)]
    p = plan_tags(some, vms, rows)
    assert [c.sys_id for c in p.key_value_changes] == ["kv0", "kv1", "kv2"] and p.guards == []


# -- our CIs in classes that no mapping covers -------------------------------------------------

OLD = "cmdb_ci_old_vm_class"  # a class whose mapping file was removed, or renamed to VM


def in_old_class(n: int, **fields) -> ExistingCI:
    ci = existing_vm(n, sys_id=f"old{n}", sys_class_name=OLD, **fields)
    return ci._replace(table=OLD)


def plan_with_others(desired, existing, others, options=OPTIONS):
    by_table = {table: [ci for ci in existing if ci.table == table] for table in POLICIES}
    return plan_changes(list(desired), by_table, SCOPES, [], [], REL_TYPES, POLICIES, options, None, list(others))


def test_our_cis_in_a_class_no_mapping_covers_are_named_and_never_touched():
    others = [in_old_class(1), in_old_class(2), in_old_class(3, **RETIRE),  # retired already: not named
              in_old_class(4, discovery_source="ServiceNow"),  # not ours: a dropped query condition
              existing_vm(5, sys_id="s5")]  # a class that is mapped: planned with its own table
    p = plan_with_others([desired_vm(9)], [], others)
    assert [w for w in p.warnings if OLD in w] == [
        f"{OLD}: 2 active CI(s) of this connector (discovery_source = {DS}) in a class that no mapping file covers "
        "now: left as they are, neither updated nor retired. Restore its mapping file, or retire them in ServiceNow."]
    assert actions(p) == [("create", vm_id(9))]  # nothing written to the old class, and no guard
    assert p.guards == [] and not p.held


def test_a_class_moved_to_another_file_creates_no_second_ci_for_a_resource_without_force():
    desired = [desired_vm(1), desired_vm(2), desired_vm(3)]  # vm3 is a new resource
    others = [in_old_class(1), in_old_class(2)]
    p = plan_with_others([*desired, desired_dc()], [dc()], others)
    assert actions(p) == [("create", vm_id(3))]
    assert p.held == {(VM, vm_id(1)), (VM, vm_id(2))}
    [guard] = p.guards
    assert guard.startswith(f"{VM}: would create 2 CIs for resources that CIs of this connector in {OLD} (a class that "
                            "no mapping file covers now) already hold (same correlation_id): none of them created")
    assert [r.parent for r in p.relation_changes] == [(VM, vm_id(3))]  # the held CIs get no relation either
    forced = plan_with_others([*desired, desired_dc()], [dc()], others, PlanOptions(DS, force=True))
    assert actions(forced) == [("create", vm_id(n)) for n in (1, 2, 3)] and forced.guards == []
    assert any(OLD in w for w in forced.warnings)  # the old CIs are still named, for the admin to retire


def test_a_policy_with_another_identity_field_matches_and_retires_on_it():
    by_name = {VM: replace(POLICIES[VM], identity_field="name"), DC: POLICIES[DC]}
    named = [replace(desired_vm(n), identity=f"vm{n}") for n in range(1, 5)]
    existing = [existing_vm(n) for n in range(1, 6)]  # vm5 is gone from AWS
    p = plan_changes([*named, desired_dc()], {VM: existing, DC: [dc()]}, SCOPES, [], [], REL_TYPES, by_name, OPTIONS)
    assert [(c.action, c.identity, c.sys_id) for c in p.changes] == [("retire", "vm5", "s5")]
    assert p.unchanged[VM] == 4 and p.sys_ids[(VM, "vm1")] == "s1" and p.sys_ids[(VM, "vm5")] == "s5"
    renamed = plan_changes([replace(named[0], fields={**named[0].fields, "short_description": "t3"})], {VM: existing[:1]},
                           SCOPES, [], [], REL_TYPES, by_name, OPTIONS)
    assert [(c.action, c.note) for c in renamed.changes] == [("update", "")]  # ours already: not an adoption


def lengths(**max_lengths) -> dict[str, TablePolicy]:
    return {**POLICIES, VM: replace(POLICIES[VM], max_lengths=max_lengths)}


def test_a_value_longer_than_its_field_is_cut_to_fit_once_and_then_compares_equal():
    """The instance keeps 10 characters of name: written cut, the rerun compares equal and writes nothing."""
    policies = lengths(name=10, correlation_id=255)
    first = plan_changes([desired_vm(1, name="a-very-long-name"), desired_vm(2)], {}, SCOPES, [], [], REL_TYPES,
                         policies, OPTIONS)
    creates = {c.identity: c.payload for c in first.changes}
    assert creates[vm_id(1)]["name"] == "a-very-lon" and creates[vm_id(2)]["name"] == "vm2"
    assert [w for w in first.warnings if w.startswith(f"{VM}.")] == [f"{VM}.name: 1 value(s) longer than the field's 10 characters (sys_dictionary) cut to "
                              f"fit, e.g. {vm_id(1)} (16 characters). To keep the whole value, lengthen the field; "
                              "to say where it is cut, add truncate:10 to the mapping."]
    rerun = plan_changes([desired_vm(1, name="a-very-long-name")], {VM: [existing_vm(1, name="a-very-lon")]}, SCOPES,
                         [], [], REL_TYPES, policies, OPTIONS)
    assert rerun.changes == [] and rerun.unchanged[VM] == 1
    # without the length, the same CMDB is written again on every run
    assert actions(plan([desired_vm(1, name="a-very-long-name")], [existing_vm(1, name="a-very-lon")])) == [
        ("update", vm_id(1))]


def test_a_ci_whose_identity_is_longer_than_its_field_is_not_written_and_its_cut_twin_is_kept():
    """Cut, the identity would match nothing on the next run: every run would create the CI again."""
    policies = lengths(correlation_id=len(vm_id(1)) - 1)
    cut = vm_id(1)[:-1]
    p = plan_changes([desired_vm(1)], {VM: [existing_vm(1, correlation_id=cut)]}, SCOPES, [], [], REL_TYPES, policies,
                     OPTIONS)
    assert p.changes == [] and p.relation_changes == []  # no create, no relation, and the CI with the cut identity stays
    assert (VM, vm_id(1)) in p.held
    assert p.warnings == [f"{VM}.correlation_id: 1 CI(s) not written: the identity is longer than the field's "
                          f"{len(cut)} characters (sys_dictionary), e.g. {vm_id(1)} ({len(vm_id(1))}). Map a shorter "
                          "identity, or lengthen the field."]


def test_a_ci_left_out_for_its_long_identity_keeps_its_ci_and_relations():
    """The field was shortened after the CI was made: the CI (whole identity) is neither retired nor unlinked,
    even with --force (which lifts the guards that would otherwise hide a wrong retire or delete)."""
    policies = lengths(correlation_id=len(vm_id(1)) - 1)
    p = plan_changes([desired_vm(1), desired_dc()], {VM: [existing_vm(1)], DC: [dc()]}, SCOPES, [],
                     [ExistingRelation("r1", "s1", "dc1", "type-hosted")], REL_TYPES, policies,
                     replace(OPTIONS, force=True))
    assert p.changes == [] and p.relation_changes == []
    # the same with the field as long as the identity: the relation is known, and kept as it is
    known = plan_changes([desired_vm(1), desired_dc()], {VM: [existing_vm(1)], DC: [dc()]}, SCOPES, [],
                         [ExistingRelation("r1", "s1", "dc1", "type-hosted")], REL_TYPES, POLICIES, OPTIONS)
    assert known.changes == [] and known.relation_changes == [] and known.relations_unchanged == 1


def test_tag_values_longer_than_their_field_are_cut_and_keys_too_long_are_left_with_their_rows():
    lengths = {"key": 8, "value": 5}
    tags = {"env": "production", "cost-centre-code": "42", "team": "red"}

    def tags_plan(rows, options=OPTIONS):
        return plan_changes([tagged_vm(1, tags)], {VM: [existing_vm(1)]}, SCOPES, [], [], REL_TYPES, POLICIES, options,
                            rows, None, lengths)

    first = tags_plan([])
    assert tag_actions(first) == [("create", vm_id(1), "env", "", "produ", None),
                                  ("create", vm_id(1), "team", "", "red", None)]
    assert [w for w in first.warnings if w.startswith("cmdb_key_value")] == [
        "cmdb_key_value.key: 1 tag(s) not written: the key is longer than the field's 8 characters (sys_dictionary), "
        f"e.g. {vm_id(1)} tag 'cost-centre-code'.... Lengthen the field to keep them.",
        "cmdb_key_value.value: 1 tag(s) with a value longer than the field's 5 characters (sys_dictionary), cut to "
        f"fit, e.g. {vm_id(1)} tag 'env' (10 characters). Lengthen the field to keep whole values."]
    # the rerun, against what the instance kept (and a row made under the long key before the field was cut
    # shorter, and one under the cut key): nothing to write, nothing deleted, even with --force
    rows = [ExistingKeyValue("kv1", "s1", "env", "produ"), ExistingKeyValue("kv2", "s1", "team", "red"),
            ExistingKeyValue("kv3", "s1", "cost-centre-code", "42"), ExistingKeyValue("kv4", "s1", "cost-cen", "42")]
    assert tag_actions(tags_plan(rows, replace(OPTIONS, force=True))) == []
    # without the lengths, the same rows are written again
    assert tag_actions(plan_tags([tagged_vm(1, tags)], [existing_vm(1)], rows[:2])) == [
        ("create", vm_id(1), "cost-centre-code", "", "42", None), ("update", vm_id(1), "env", "produ", "production", "kv1")]


NOW = "2026-12-01 08:00:00"
STAMPING = PlanOptions(DS, now=NOW, last_discovered_days=8)


def test_writes_stamp_last_discovered_and_creates_first_discovered_too():
    """Every CI written was seen now: a create gets first_discovered and last_discovered, an update and a revive
    last_discovered; a retire keeps the last time it was seen. Without stamping (the default), none of them."""
    existing = [existing_vm(n, last_discovered="2026-11-30 08:00:00") for n in range(1, 6)]
    existing[1] = existing_vm(2, install_status="7", operational_status="6", last_discovered="2026-11-30 08:00:00")
    desired = [desired_vm(1, name="renamed"), desired_vm(2), desired_vm(3), desired_vm(4), desired_vm(6)]
    p = plan(desired, existing, options=STAMPING)
    by_action = {c.action: c for c in p.changes}
    assert set(by_action) == {"create", "update", "revive", "retire"}
    assert by_action["create"].payload["first_discovered"] == NOW == by_action["create"].payload["last_discovered"]
    assert by_action["update"].diff["last_discovered"] == ("2026-11-30 08:00:00", NOW)
    assert by_action["revive"].diff["last_discovered"] == ("2026-11-30 08:00:00", NOW)
    assert "last_discovered" not in by_action["retire"].diff
    assert p.unchanged[VM] == 2  # vm3 and vm4: seen a day ago, not due
    unstamped = plan(desired, existing)
    assert not any("discovered" in name for c in unstamped.changes for name in c.diff)


def test_an_unchanged_ci_is_stamped_again_once_its_stamp_is_old_spread_by_sys_id():
    """Due once older than between half and all of the period (8 days here), by the sys_id's last hex digit:
    ...0 at 8 days, ...f at 17/32 of them (4.25 days). (For a CI never stamped, see the next test.)"""
    def p(sys_id: str, last: str):
        return plan([desired_vm(1)], [existing_vm(1, sys_id=sys_id, last_discovered=last)], options=STAMPING)

    assert [c.action for c in p("abc0", "2026-11-23 07:59:59").changes] == ["refresh"]  # 8 days and a second ago
    assert p("abc0", "2026-11-23 08:00:01").changes == []
    assert p("abcf", "2026-11-23 08:00:01").changes[0].diff == {"last_discovered": ("2026-11-23 08:00:01", NOW)}
    assert p("abcf", "2026-11-27 01:59:59").changes[0].action == "refresh"  # 4.25 days and a second ago
    assert p("abcf", "2026-11-27 02:00:01").changes == []
    assert p("ABCF", "2026-11-27 01:59:59").changes[0].action == "refresh"  # hex in either case
    assert p("s-not-hex", "2026-11-24 08:00:00").changes == []  # any other sys_id: the whole period


def test_cis_never_stamped_are_stamped_over_half_the_period_not_all_in_one_run():
    """Stamping turned on (last_discovered_days from 0 to 8): the CIs without a stamp come due over 4 days, a
    quarter a day by the sys_id's last hex digit (any other sys_id on one of those days), each on one day."""
    from datetime import datetime, timedelta

    sys_ids = [f"{n:031x}{d}" for n, d in enumerate("0123456789abcdeF")] + ["s-not-hex"]
    existing = [existing_vm(n, sys_id=sys_id, last_discovered="") for n, sys_id in enumerate(sys_ids)]
    desired = [desired_vm(n) for n in range(len(sys_ids))]
    start = datetime.strptime(NOW, "%Y-%m-%d %H:%M:%S")
    due_on: dict[str, list[int]] = {sys_id: [] for sys_id in sys_ids}
    for day in range(8):  # two spreads of 4 days
        now = (start + timedelta(days=day)).strftime("%Y-%m-%d %H:%M:%S")
        changes = plan(desired, existing, options=replace(STAMPING, now=now)).changes
        assert {c.action for c in changes} <= {"refresh"} and all(c.payload == {"last_discovered": now} for c in changes)
        assert len(changes) in (4, 5)  # a quarter of the 16 digits, and on one day the other sys_id too
        for change in changes:
            due_on[change.sys_id].append(day)
    assert all(len(days) == 2 and days[1] - days[0] == 4 for days in due_on.values())  # once per 4 days, until stamped


def test_a_plan_applied_then_planned_again_at_the_same_time_is_empty_with_stamping():
    existing = [existing_vm(n, sys_id=f"{n:031x}0", last_discovered="2026-01-01 00:00:00") for n in range(1, 5)]
    desired = [desired_vm(1, name="renamed"), desired_vm(2), desired_vm(3), desired_vm(4), desired_vm(5)]
    first = plan(desired, existing, options=STAMPING)
    assert sorted(c.action for c in first.changes) == ["create", "refresh", "refresh", "refresh", "update"]
    after = {ci.sys_id: ExistingCI(VM, ci.sys_id, dict(ci.fields)) for ci in existing}
    for change in first.changes:
        if change.action == "create":
            after["new"] = ExistingCI(VM, "new", {"sys_id": "new", "sys_class_name": VM, **change.payload})
        else:
            after[change.sys_id].fields.update(change.payload)
    assert plan(desired, list(after.values()), options=STAMPING).changes == []


def test_a_time_not_in_servicenow_form_is_refused():
    with pytest.raises(ValueError, match="YYYY-MM-DD HH:MM:SS"):
        plan([desired_vm(1)], [existing_vm(1)], options=PlanOptions(DS, now="2026-12-01T08:00:00Z", last_discovered_days=7))


def test_a_mapping_that_gives_last_discovered_a_value_of_its_own_keeps_it():
    """Were it stamped too, each run would write the mapping's value back, and the next the stamp: never still."""
    launched = "2026-06-01 10:00:00"
    desired = [desired_vm(1, last_discovered=launched), desired_vm(2, name="renamed", last_discovered=launched),
               desired_vm(3, last_discovered=launched)]
    existing = [existing_vm(n, last_discovered=launched) for n in (1, 2)]
    p = plan(desired, existing, options=STAMPING)
    assert sorted((c.action, c.payload.get("last_discovered")) for c in p.changes) == [
        ("create", launched), ("update", None)]
    assert next(c for c in p.changes if c.action == "create").payload["first_discovered"] == NOW
    assert p.unchanged[VM] == 1  # old as it is, no refresh


# -- accounts the configuration no longer targets ---------------------------------------------------------

GONE = "999988887777"


def plan_targeting(desired, existing, targeted, options=OPTIONS, policies=POLICIES):
    by_table: dict[str, list] = {}
    for ci in existing:
        by_table.setdefault(ci.table, []).append(ci)
    return plan_changes(list(desired), by_table, list(SCOPES), [], [], REL_TYPES, policies, options, targeted=targeted)


def test_cis_of_an_account_no_longer_targeted_are_kept_and_named():
    existing = [existing_vm(1), existing_vm(2, account=GONE), existing_vm(3, account=GONE),
                existing_vm(4, account=GONE, install_status="7", operational_status="6")]  # retired already: not named
    p = plan_targeting([desired_vm(1)], existing, frozenset({A}))
    assert p.changes == []  # unknown is not empty: nothing of an account not collected is retired
    assert p.untargeted == {GONE: {VM: 2}}
    (warning,) = [w for w in p.warnings if GONE in w]
    assert f"{GONE} (2)" in warning and "--retire-account" in warning and "no longer targets" in warning


def test_no_account_is_named_when_the_targets_are_not_known_or_it_is_one():
    existing = [existing_vm(1), existing_vm(2, account=GONE)]
    assert plan_targeting([desired_vm(1)], existing, None).untargeted == {}  # an inventory without them
    # a target not collected in this run (another shard's, suspended, denied) is still a target
    assert plan_targeting([desired_vm(1)], existing, frozenset({A, GONE})).untargeted == {}


def test_the_organizations_structure_is_neither_named_nor_retired_with_the_management_account():
    """Its CIs name the management account in their correlation_id; without the tree (aws.accounts), they are
    not desired. They stand for the Organization, not for that account's resources."""
    org = "cmdb_ci_cloud_org"
    policies = {**POLICIES, org: TablePolicy(org, "correlation_id", ("organizations:organization",), RETIRE, REVIVE,
                                             structure=True)}
    ci = ExistingCI(org, "o1", {"sys_id": "o1", "sys_class_name": org, "discovery_source": DS, "object_id": "o-1",
                                "correlation_id": f"arn:aws:organizations::{GONE}:organization/o-1",
                                "install_status": "1", "operational_status": "1"})
    existing = [ci, existing_vm(2, account=GONE), *(existing_vm(n) for n in range(10, 20))]
    desired = [desired_vm(n) for n in range(10, 20)]
    p = plan_targeting(desired, existing, frozenset({A}), policies=policies)
    assert p.untargeted == {GONE: {VM: 1}}
    p = plan_targeting(desired, existing, frozenset({A}), replace(OPTIONS, retire_accounts=frozenset({GONE}), force=True),
                       policies)
    assert actions(p) == [("retire", vm_id(2, GONE))]


def test_retire_account_retires_its_owned_cis_only_after_the_client_side_check():
    theirs = existing_vm(5, account=GONE, discovery_source="ServiceNow")  # not ours: never retired
    other_class = ExistingCI(VM, "s6", {**existing_vm(6, account=GONE).fields, "sys_class_name": "cmdb_ci_server",
                                        "sys_id": "s6"})
    ours = [existing_vm(n) for n in range(10, 20)]  # the gone account's CIs are a small share of the class
    existing = [*ours, *(existing_vm(n, account=GONE) for n in (2, 3)), theirs, other_class]
    desired = [desired_vm(n) for n in range(10, 20)]
    options = replace(OPTIONS, retire_accounts=frozenset({GONE}))
    p = plan_targeting(desired, existing, frozenset({A}), options)
    assert actions(p) == [("retire", vm_id(2, GONE)), ("retire", vm_id(3, GONE))]
    assert p.changes[0].diff == {"install_status": ("1", "7"), "operational_status": ("1", "6")}
    assert p.untargeted == {} and not p.guards
    # without --retire-account, they are kept
    assert actions(plan_targeting(desired, existing, frozenset({A}))) == []
    # the guard holds for them too: an account with most of a table's CIs retires none without --force
    p = plan_targeting(desired[:1], [*ours[:1], *existing[10:]], frozenset({A}), options)
    assert actions(p) == [] and "would retire 2 of 3" in p.guards[0]
    p = plan_targeting(desired[:1], [*ours[:1], *existing[10:]], frozenset({A}), replace(options, force=True))
    assert actions(p) == [("retire", vm_id(2, GONE)), ("retire", vm_id(3, GONE))]


# -- a wait before retiring (reconcile.retire_after_hours) ---------------------------------------------------

WAIT_NOW = "2026-12-01 12:00:00"
WAITING = PlanOptions(DS, now=WAIT_NOW, retire_after_hours=24)


def test_a_ci_gone_is_retired_only_once_it_has_been_gone_the_hours_set():
    present = [desired_vm(n) for n in range(1, 9)]  # 8 of 10 still there: under the guard's share
    cis = [existing_vm(n) for n in range(1, 11)]
    first = plan(present, cis, options=WAITING)
    assert [c for c in first.changes if c.action == "retire"] == []
    assert first.absent == {(VM, vm_id(9)): ("s9", WAIT_NOW), (VM, vm_id(10)): ("s10", WAIT_NOW)}  # gone since this run
    assert first.retire_pending == {(VM, vm_id(9)): "2026-12-02 12:00:00", (VM, vm_id(10)): "2026-12-02 12:00:00"}
    assert first.unchanged[VM] == 10  # the two waiting are still active, and nothing is written to them
    # a later run, 23 hours on: still waiting, since the first run's time (not its own)
    later = replace(WAITING, now="2026-12-02 11:00:00", absent_since={k: v[1] for k, v in first.absent.items()})
    assert plan(present, cis, options=later).retire_pending == first.retire_pending
    # 24 hours on: retired; one that came back in between is no longer waited for
    due = replace(later, now="2026-12-02 12:00:00")
    back = plan([*present, desired_vm(10)], cis, options=due)
    assert actions(back) == [("retire", vm_id(9))] and back.retire_pending == {}
    assert back.absent == {(VM, vm_id(9)): ("s9", WAIT_NOW)}  # retired now: the next run finds it retired, not active
    without_wait = plan(present, cis, options=replace(due, retire_after_hours=0))
    assert actions(without_wait) == sorted([("retire", vm_id(9)), ("retire", vm_id(10))])
    assert without_wait.absent == {}


def test_a_ci_gone_keeps_its_time_through_a_run_that_could_not_collect_its_scope():
    since = {(VM, vm_id(2)): "2026-11-29 00:00:00"}
    options = replace(WAITING, absent_since=since)
    denied = [Scope(A, R, "ec2:instance", DENIED), Scope(A, R, "ec2:region", OK)]
    p = plan([], [existing_vm(1), existing_vm(2)], scopes=denied, options=options)
    assert p.changes == [] and p.retire_pending == {}
    assert p.absent == {(VM, vm_id(2)): ("s2", "2026-11-29 00:00:00")}  # the one gone before: still gone since then
    unread = plan_changes([], {VM: None}, SCOPES, [], [], REL_TYPES, POLICIES, options)  # the class not read at all
    assert unread.absent == {(VM, vm_id(2)): ("", "2026-11-29 00:00:00")}


def test_the_wait_does_not_loosen_the_guard_nor_hold_back_an_account_the_operator_retires():
    cis = [existing_vm(n) for n in range(1, 5)]
    since = {(VM, vm_id(n)): "2026-11-01 00:00:00" for n in range(1, 5)}
    guarded = plan([], cis, options=replace(WAITING, absent_since=since))
    assert guarded.changes == [] and guarded.guards and len(guarded.absent) == 4  # all due, held by the guard
    other = "999988887777"
    gone = plan([], [existing_vm(1, account=other)],
                options=replace(WAITING, retire_accounts=frozenset({other}), force=True))
    assert actions(gone) == [("retire", vm_id(1, other))] and gone.retire_pending == {}
    no_clock = plan([desired_vm(1)], [existing_vm(1), existing_vm(2)], options=replace(WAITING, now=""))
    assert no_clock.changes == [] and list(no_clock.retire_pending) == [(VM, vm_id(2))]  # no time: never due
