"""resolve_lookups is pure: values mapped + the records found -> sys_ids, or the field left out, named."""

from __future__ import annotations

from connector.mapping.lookups import lookup_values, resolve_lookups
from connector.models import DesiredCI, Lookup

VM = "cmdb_ci_vm_instance"
USERS = Lookup("sys_user", "email")
LOOKUPS = {VM: {"owned_by": USERS}}


def vm(n: int, owner: str | None, create_only: dict | None = None) -> DesiredCI:
    fields = {"name": f"vm{n}", "correlation_id": f"arn:{n}"}
    if owner is not None:
        fields["owned_by"] = owner
    return DesiredCI(VM, f"arn:{n}", fields, (), ("1", "r", "ec2:instance"), create_only=create_only or {})


def test_one_record_gives_its_sys_id_and_anything_else_leaves_the_field_out():
    cis = [vm(1, "Jane@X.com"), vm(2, "bob@x.com"), vm(3, "nobody@x.com"), vm(4, "a^NQb"), vm(5, ""),
           vm(6, None, create_only={"owned_by": "jane@x.com"}), DesiredCI("cmdb_ci_network", "n", {"owned_by": "x"}, (),
                                                                         ("1", "r", "ec2:vpc"))]
    assert lookup_values(cis, LOOKUPS) == {USERS: {"Jane@X.com", "bob@x.com", "nobody@x.com", "a^NQb", "jane@x.com"}}
    found = {USERS: {"jane@x.com": ["u-jane"], "bob@x.com": ["u-bob", "u-bob2"]}}
    out, warnings, unresolved = resolve_lookups(cis, LOOKUPS, found)
    assert [ci.fields.get("owned_by", "(left out)") for ci in out] == [
        "u-jane", "(left out)", "(left out)", "(left out)", "", "(left out)", "x"]
    assert out[5].create_only == {"owned_by": "u-jane"}  # a create's value, looked up too
    assert out[4] is cis[4] and out[6] is cis[6]  # nothing to look up: the same CI
    assert len(warnings) == 3  # one per field and kind, sorted by kind
    for warning, kind in zip(warnings, ("names no record of sys_user.email", "names several records of sys_user.email",
                                        "holds ^, which an encoded query cannot carry")):
        assert warning.startswith(f"cmdb_ci_vm_instance.owned_by: 1 CI(s) whose value {kind}"), warning
    assert "(e.g. 'bob@x.com' for arn:2: 2 records)" in warnings[1]
    # and every one of them, for whoever mends the tags
    assert [(u["identity"], u["value"], u["reason"]) for u in unresolved] == [
        ("arn:2", "bob@x.com", "names several records"), ("arn:3", "nobody@x.com", "names no record"),
        ("arn:4", "a^NQb", "holds ^: not asked")]
    assert unresolved[0]["field"] == "owned_by" and unresolved[0]["lookup"] == "sys_user.email"


def test_a_table_not_read_leaves_every_value_of_its_lookups_out():
    out, warnings, unresolved = resolve_lookups([vm(1, "jane@x.com"), vm(2, "")], LOOKUPS, {USERS: None})
    assert [u["reason"] for u in unresolved] == ["its table could not be read"]
    assert "owned_by" not in out[0].fields and out[1].fields["owned_by"] == ""
    (warning,) = warnings
    assert warning.startswith("cmdb_ci_vm_instance.owned_by: 1 CI(s) whose value could not be looked up: sys_user "
                              "was not read")


def test_no_lookups_no_work():
    cis = [vm(1, "jane@x.com")]
    assert resolve_lookups(cis, {}, {}) == (cis, [], [])


def test_the_fields_a_lookups_where_names_are_those_its_conditions_begin_with():
    where = "active=true^ORu_tier.levelIN1,2^ORDERBYname^emailISNOTEMPTY^active=false^ORDERBYDESCsys_created_on"
    assert Lookup("sys_user", "email", where).where_fields() == ["active", "u_tier", "email"]
    assert Lookup("sys_user", "email").where_fields() == []
    assert Lookup("sys_user", "email", "order_type=1^ORorigin=x").where_fields() == ["order_type", "origin"]
