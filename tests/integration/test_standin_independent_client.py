"""ServiceNow's own client, PySNC, uses the stand-in unchanged: over HTTPS, basic
auth and OAuth, GlideRecord queries, inserts, updates, deletes and batches."""

from __future__ import annotations

import pytest
from pysnc import ServiceNowClient
from pysnc.auth import ServiceNowPasswordGrantFlow

from connector.errors import ServiceNowError
from connector.sandbox.servicenow import ServiceNowStandIn
from connector.sandbox.tls import self_signed_certificate
from connector.servicenow.client import TableClient
from connector.settings import ServiceNowSettings

PASSWORD = "pysnc-password"


@pytest.fixture
def https_standin(tmp_path, monkeypatch):
    # requests lets these override a session's own CA bundle; PySNC relies on the session's.
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    cert, key = self_signed_certificate(tmp_path / "tls")
    with ServiceNowStandIn(users={"admin": PASSWORD}, oauth_clients={"pysnc": "pysnc-secret"}, tls=(cert, key)) as server:
        yield server, cert


def test_pysnc_glide_record_round_trip(https_standin):
    server, cert = https_standin
    client = ServiceNowClient(server.url, ("admin", PASSWORD), verify=str(cert))
    gr = client.GlideRecord("cmdb_ci_vm_instance")
    gr.initialize()
    gr.name = "pysnc-vm"
    gr.cpus = 4
    sys_id = gr.insert()
    assert sys_id

    found = client.GlideRecord("cmdb_ci_vm_instance")
    found.add_query("name", "pysnc-vm")
    found.query()
    assert len(found) == 1 and found.next()
    assert found.get_value("cpus") == "4" and found.get_value("sys_class_name") == "cmdb_ci_vm_instance"
    found.name = "renamed"
    found.update()
    assert server.store.get("cmdb_ci_vm_instance", str(sys_id))["name"] == "renamed"

    parent = client.GlideRecord("cmdb_ci")  # table inheritance, seen by another client
    parent.query()
    assert len(parent) == 1

    doomed = client.GlideRecord("cmdb_ci_vm_instance")
    assert doomed.get(str(sys_id))
    assert doomed.delete()
    assert server.store.get("cmdb_ci_vm_instance", str(sys_id)) is None


def test_pysnc_pages_through_many_rows_and_batches_deletes(https_standin):
    server, cert = https_standin
    for i in range(25):
        server.store.insert("cmdb_ci_network", {"name": f"net{i:02d}"}, "admin")
    client = ServiceNowClient(server.url, ("admin", PASSWORD), verify=str(cert))
    gr = client.GlideRecord("cmdb_ci_network", batch_size=10)
    gr.order_by("name")
    gr.query()
    names = [r.get_value("name") for r in gr]
    assert names == [f"net{i:02d}" for i in range(25)]
    assert server.stats["GET cmdb_ci_network"] == 3

    gr = client.GlideRecord("cmdb_ci_network")
    gr.add_query("name", "STARTSWITH", "net1")
    gr.query()
    assert gr.delete_multiple()
    assert server.stats["POST batch"] >= 1
    assert sorted(r["name"] for r in server.store.rows("cmdb_ci_network")) == (
        [f"net{i:02d}" for i in range(10)] + [f"net{i:02d}" for i in range(20, 25)])


def test_pysnc_oauth_password_flow(https_standin):
    server, cert = https_standin
    flow = ServiceNowPasswordGrantFlow("admin", PASSWORD, "pysnc", "pysnc-secret")
    client = ServiceNowClient(server.url, flow, verify=str(cert))
    gr = client.GlideRecord("cmdb_rel_type")
    gr.add_query("name", "Hosted on::Hosts")
    gr.query()
    assert len(gr) == 1
    assert server.stats["oauth password"] == 1


def test_our_client_verifies_tls_by_default_and_trusts_a_ca_bundle(https_standin, monkeypatch):
    server, cert = https_standin
    # a CA bundle in the environment must not override the configured one
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    sleeps: list[float] = []
    strict = TableClient(ServiceNowSettings(instance_url=server.url, username="admin", password=PASSWORD),
                         sleep=sleeps.append)
    with pytest.raises(ServiceNowError, match=r"^the instance's TLS certificate was not accepted: certificate verify "
                                              r"failed: .*set servicenow.ca_bundle to its CA certificate \(PEM\)"):
        list(strict.query("cmdb_ci", "", ["sys_id"]))
    assert sleeps == []  # not retried: waiting will not change a certificate
    trusting = TableClient(ServiceNowSettings(instance_url=server.url, username="admin", password=PASSWORD, ca_bundle=cert))
    assert list(trusting.query("cmdb_ci", "", ["sys_id"])) == []
