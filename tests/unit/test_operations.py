"""The AWS calls named by the mapping files, checked against botocore's models."""

from __future__ import annotations

import pytest

from connector.aws.operations import check_operations, unknown_operations
from connector.errors import MappingError
from connector.mapping.load import load_mappings

from .test_mapping import VALID


def folder_with(tmp_path, text: str):
    (tmp_path / "cmdb_ci_network.toml").write_text(text)
    return load_mappings(tmp_path)


def test_every_call_of_the_built_in_mappings_is_known():
    assert unknown_operations(load_mappings()) == []


@pytest.mark.parametrize("edit, expected", [
    (('operation = "describe_vpcs"', 'operation = "describe_vpcz"'),
     "cmdb_ci_network.toml: source.operation: 'describe_vpcz' is not an operation of ec2 (did you mean 'describe_vpcs'"),
    (('service = "ec2"', 'service = "ec3"'),
     "cmdb_ci_network.toml: source.service: 'ec3' is not an AWS service botocore knows (did you mean "),
    (("[fields]", '[source.detail]\noperation = "describe_vpc_atribute"\nparams = { VpcId = "VpcId" }\n[fields]'),
     "cmdb_ci_network.toml: source.detail.operation: 'describe_vpc_atribute' is not an operation of ec2 "
     "(did you mean 'describe_vpc_attribute'"),
    (("[fields]", '[tags]\npath = "Tags"\noperation = "describe_tagz"\nparams = { Resources = "[VpcId]" }\n[fields]'),
     "cmdb_ci_network.toml: tags.operation: 'describe_tagz' is not an operation of ec2 (did you mean 'describe_tags'"),
    (('id = "VpcId"', 'id = "VpcId"\nparams = { Fliters = [] }'),
     "cmdb_ci_network.toml: source.params.Fliters: not a parameter of ec2 describe_vpcs (did you mean 'Filters'"),
    (("[fields]", '[source.detail]\noperation = "describe_vpc_attribute"\nparams = { VpcID = "VpcId" }\n[fields]'),
     "cmdb_ci_network.toml: source.detail.params.VpcID: not a parameter of ec2 describe_vpc_attribute (did you "
     "mean 'VpcId'"),
    (("[fields]", '[source.join]\noperation = "describe_dhcp_options"\nparam = "DhcpOptionId"\non = "DhcpOptionsId"\n'
                  'items = "DhcpOptions"\nmatch = "DhcpOptionsId"\nkey = "Dhcp"\n[fields]'),
     "cmdb_ci_network.toml: source.join.param: not a parameter of ec2 describe_dhcp_options (did you mean "
     "'DhcpOptionsIds'"),
    (("[fields]", '[source.join]\noperation = "describe_dhcp_option"\nparam = "DhcpOptionsIds"\non = "DhcpOptionsId"\n'
                  'items = "DhcpOptions"\nmatch = "DhcpOptionsId"\nkey = "Dhcp"\n[fields]'),
     "cmdb_ci_network.toml: source.join.operation: 'describe_dhcp_option' is not an operation of ec2 (did you "
     "mean 'describe_dhcp_options'"),
    (("[fields]", '[source.join]\noperation = "describe_dhcp_options"\nparam = "DhcpOptionsIds"\non = "DhcpOptionsId"\n'
                  'items = "DhcpOptions"\nmatch = "DhcpOptionsId"\nkey = "Dhcp"\nparams = { DryRn = false }\n[fields]'),
     "cmdb_ci_network.toml: source.join.params.DryRn: not a parameter of ec2 describe_dhcp_options (did you "
     "mean 'DryRun'"),
    # a member the call does not answer: every answer would hold no item, and each CI of the source be retired
    (('items = "Vpcs"', 'items = "Vpc"'),
     "cmdb_ci_network.toml: source.items: 'Vpc' reads 'Vpc', which ec2 describe_vpcs does not answer (did you "
     "mean 'Vpcs'?); it answers NextToken, Vpcs"),
    (('items = "Vpcs"', "items = \"vpcs[?State == 'available']\""),
     "source.items: \"vpcs[?State == 'available']\" reads 'vpcs', which ec2 describe_vpcs does not answer"),
    (("[fields]", '[source.detail]\noperation = "describe_vpc_attribute"\nparams = { VpcId = "VpcId" }\n'
                  'result = "EnableDnsSupport.Value"\n[fields]'), None),  # a member it answers: no problem
    (("[fields]", '[source.detail]\noperation = "describe_vpc_attribute"\nparams = { VpcId = "VpcId" }\n'
                  'result = "DnsSupport.Value"\n[fields]'),
     "source.detail.result: 'DnsSupport.Value' reads 'DnsSupport', which ec2 describe_vpc_attribute does not answer"),
    (("[fields]", '[source.join]\noperation = "describe_dhcp_options"\nparam = "DhcpOptionsIds"\non = "DhcpOptionsId"\n'
                  'items = "DhcpOption[]"\nmatch = "DhcpOptionsId"\nkey = "Dhcp"\n[fields]'),
     "source.join.items: 'DhcpOption[]' reads 'DhcpOption', which ec2 describe_dhcp_options does not answer (did "
     "you mean 'DhcpOptions'"),
    (("[fields]", '[tags]\npath = "Tag[0].Tags"\noperation = "describe_tags"\nparams = { Filters = "[]" }\n[fields]'),
     "tags.path: 'Tag[0].Tags' reads 'Tag', which ec2 describe_tags does not answer (did you mean 'Tags'"),
])
def test_a_misspelled_service_or_operation_is_named_with_the_nearest_real_one(tmp_path, edit, expected):
    mappings = folder_with(tmp_path, VALID.replace(*edit))
    if expected is None:
        assert unknown_operations(mappings) == []
        return
    [problem] = unknown_operations(mappings)
    assert expected in problem and problem.startswith(str(tmp_path))
    with pytest.raises(MappingError) as info:
        check_operations(mappings)
    assert info.value.problems == [problem]


def test_validate_names_it_and_exits_2(tmp_path, capsys):
    from connector.cli import main

    maps = tmp_path / "maps"
    maps.mkdir()
    (maps / "cmdb_ci_network.toml").write_text(VALID.replace("describe_vpcs", "describe_vpcz"))
    config = tmp_path / "config.toml"
    config.write_text('[aws]\nexternal_id = "xx-yy"\n[servicenow]\ninstance_url = "http://127.0.0.1:9"\n'
                      'username = "u"\npassword = "p"\n[reconcile]\nmappings_dir = "maps"\n')
    assert main(["validate", "--config", str(config)]) == 2
    assert "source.operation: 'describe_vpcz' is not an operation of ec2" in capsys.readouterr().err


def test_a_run_with_a_misspelled_operation_makes_no_aws_call(tmp_path, monkeypatch):
    import connector.run as run
    from connector.settings import load_settings

    opened = []
    monkeypatch.setattr(run, "open_session_pool", lambda settings: opened.append(settings))
    settings = load_settings(None, {"aws": {"external_id": "xx-yy"},
                                    "servicenow": {"instance_url": "http://127.0.0.1:9", "username": "u", "password": "p"}})
    with pytest.raises(MappingError, match="'describe_vpcz' is not an operation of ec2"):
        run.collect_from_aws(settings, folder_with(tmp_path, VALID.replace("describe_vpcs", "describe_vpcz")))
    assert opened == []
