"""What a run logs of its report's findings, for whoever reads the log and not the report."""

from __future__ import annotations

import logging

from connector.run import _log_findings


def test_guards_warnings_and_a_count_of_the_items_not_mapped_are_logged(caplog):
    caplog.set_level(logging.INFO, logger="connector")
    problem = {"scope": ["111122223333", "eu-west-1", "ec2:instance"], "table": "cmdb_ci_vm_instance",
               "message": "cmdb_ci_vm_instance.toml: correlation_id is empty"}
    _log_findings({"guards": ["cmdb_ci_vm_instance: would retire 6 of 8 owned CIs"],
                   "warnings": ["cmdb_ci_vm_instance.ipaddress: the class has no such field"],
                   "mapping_problems": [problem] * 3})
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "guard: cmdb_ci_vm_instance: would retire 6 of 8 owned CIs"),
        ("WARNING", "cmdb_ci_vm_instance.ipaddress: the class has no such field"),
        ("WARNING", "3 item(s) could not be mapped, so nothing is retired in their account, region and source; e.g. "
                    "cmdb_ci_vm_instance in 111122223333/eu-west-1/ec2:instance: cmdb_ci_vm_instance.toml: "
                    "correlation_id is empty (all of them in the report's mapping_problems)"),
    ]


def test_a_clean_report_logs_nothing(caplog):
    caplog.set_level(logging.INFO, logger="connector")
    _log_findings({"guards": [], "warnings": [], "mapping_problems": []})
    assert caplog.records == []
