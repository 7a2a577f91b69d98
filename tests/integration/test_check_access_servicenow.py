"""check-access, the ServiceNow side, against the stand-in over HTTP: every table a run reads, each
relation type, the IRE API; what is refused or missing named, exit 3; no AWS call with --servicenow-only."""

from __future__ import annotations

import pytest

from connector.cli import main
from connector.sandbox.servicenow import ServiceNowStandIn

PASSWORD = "access-password"


def config(tmp_path, url: str, extra: str = "", reconcile: str = "") -> str:
    path = tmp_path / "config.toml"
    path.write_text(f'[aws]\nexternal_id = "not-used-here"\n\n[servicenow]\ninstance_url = "{url}"\nusername = "svc"\n'
                    f'{extra}\n[reconcile]\ntags = true\n{reconcile}\n[report]\noutput_dir = "reports"\n')
    path.chmod(0o600)
    return str(path)


@pytest.fixture
def standin(monkeypatch):
    monkeypatch.setenv("CMDB_SERVICENOW__PASSWORD", PASSWORD)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # never asked: a call would fail the test
    with ServiceNowStandIn(users={"svc": PASSWORD}) as server:
        yield server


def lines_of(out: str) -> dict[str, list[str]]:
    """Each table's rows: table -> [status, ...]."""
    rows: dict[str, list[str]] = {}
    for line in out.splitlines()[2:-1]:
        if line.startswith("    hint: "):
            continue
        table, status = line.split()[:2]
        rows.setdefault(table, []).append(status)
    return rows


def test_every_table_a_run_reads_is_readable_on_a_fresh_instance(tmp_path, standin, capsys):
    assert main(["check-access", "--servicenow-only", "--config", config(tmp_path, standin.url)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"servicenow: {standin.url} as svc (basic)\n")
    rows = lines_of(out)
    assert rows["(login)"] == ["ok"] and rows["cmdb_ci_vm_instance"] == ["ok"] and rows["cmdb_key_value"] == ["ok"]
    assert rows["cmdb_rel_type"] == ["ok", "ok"]  # readable, and every type the mappings name is there
    assert {"cmdb_rel_ci", "cmdb_ci", "sys_db_object", "sys_dictionary"} <= set(rows)
    assert "identifyreconcile" not in rows  # servicenow.writer is "table"
    assert "failed. Writes are not tried" in out and ", 0 failed." in out


def test_refused_and_missing_tables_a_missing_relation_type_and_the_ire_api_are_named(tmp_path, standin, capsys):
    standin.faults.update({"acl_read_denied_tables": ["cmdb_ci_network"], "acl_denied_tables": ["identifyreconcile"],
                           "missing_tables": ["cmdb_ci_kubernetes_cluster"]})
    for row in standin.store.rows("cmdb_rel_type"):
        if row["name"] == "Located in::Houses":
            standin.store.delete("cmdb_rel_type", row["sys_id"])
    assert main(["check-access", "--servicenow-only", "--config",
                 config(tmp_path, standin.url, 'writer = "ire"\n')]) == 3
    out = capsys.readouterr().out
    rows = lines_of(out)
    assert rows["cmdb_ci_network"] == ["denied"] and rows["cmdb_ci_kubernetes_cluster"] == ["missing"]
    assert rows["identifyreconcile"] == ["denied"] and rows["cmdb_ci_vm_instance"] == ["ok"]
    assert "not in cmdb_rel_type: Located in::Houses" in out
    assert "it needs the itil or asset role" in out
    assert out.count("    hint: grant the user read on it") == 1 and out.count("    hint: the instance lacks it") == 1


def test_a_relation_type_the_instance_spells_otherwise_names_the_nearest_it_has(tmp_path, standin, capsys):
    """The mappings name a descriptor the instance words a little differently (or a typo): the hint says which."""
    (row,) = [r for r in standin.store.rows("cmdb_rel_type") if r["name"] == "Located in::Houses"]
    standin.store.update("cmdb_rel_type", row["sys_id"], {"name": "Located in::Housed"}, "admin")
    assert main(["check-access", "--servicenow-only", "--config", config(tmp_path, standin.url)]) == 3
    out = capsys.readouterr().out
    assert ("not in cmdb_rel_type: Located in::Houses (did you mean 'Located in::Housed'?) (those relations would "
            "be left unmanaged)") in out


def test_a_field_the_class_lacks_is_named_before_any_run(tmp_path, standin, capsys):
    """A misspelled field in a mapping, or a lookup's: a run would leave it unwritten, with a warning."""
    import shutil

    from connector.mapping.load import builtin_mappings_dir

    assert main(["check-access", "--servicenow-only", "--config", config(tmp_path, standin.url)]) == 0
    out = capsys.readouterr().out
    assert lines_of(out)["sys_dictionary"] == ["ok", "ok"]  # readable, and every field the built-in files write
    assert "the fields the mappings write or look up" in out
    folder = tmp_path / "mappings"
    shutil.copytree(builtin_mappings_dir(), folder, ignore=shutil.ignore_patterns("__*"))
    path = folder / "cmdb_ci_vm_instance.toml"
    path.write_text(path.read_text().replace('ip_address = "PrivateIpAddress"', 'ip_adress = "PrivateIpAddress"\n'
                                             'owned_by = { tag = "Owner", lookup = "sys_user.emial" }'))
    edited = config(tmp_path, standin.url, reconcile=f'mappings_dir = "{folder}"\n')
    assert main(["check-access", "--servicenow-only", "--config", edited]) == 3
    out = capsys.readouterr().out
    assert "no field ip_adress on this instance (sys_dictionary)" in out and "no field emial on this instance" in out
    rows = lines_of(out)
    assert rows["cmdb_ci_vm_instance"] == ["ok", "missing"] and rows["sys_user"] == ["ok", "missing"]


def test_a_refused_login_is_one_row_and_exit_3(tmp_path, standin, capsys, monkeypatch):
    monkeypatch.setenv("CMDB_SERVICENOW__PASSWORD", "wrong-password")
    assert main(["check-access", "--servicenow-only", "--config", config(tmp_path, standin.url)]) == 3
    out = capsys.readouterr().out
    assert lines_of(out) == {"(login)": ["denied"]} and "refused the credentials" in out
    assert "wrong-password" not in out
