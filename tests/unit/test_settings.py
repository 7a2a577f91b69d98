from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from connector.cli import main
from connector.errors import ConfigError
from connector.settings import find_config, load_settings

REPO = Path(__file__).resolve().parents[2]
GOOD = """
[aws]
external_id = "ext-id-123"
regions = ["us-east-1", "eu-west-1"]

[servicenow]
instance_url = "https://acme.service-now.com/"
username = "svc"
password = "hunter2-secret"

[reconcile]
mappings_dir = "my-mappings"

[report]
output_dir = "out/reports"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_good_config_loads_with_types_and_defaults(tmp_path):
    settings = load_settings(write(tmp_path, GOOD))
    assert settings.aws.regions == ["us-east-1", "eu-west-1"]
    assert settings.aws.role_name == "CMDBReadRole"
    assert settings.aws.session_duration_seconds == 3600
    assert settings.servicenow.instance_url == "https://acme.service-now.com"
    assert settings.servicenow.discovery_source == "AWS CMDB Connector"
    assert settings.reconcile.max_retire_fraction == 0.25


def test_relative_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    monkeypatch.chdir("/")
    settings = load_settings(write(tmp_path, GOOD))
    assert settings.path(settings.reconcile.mappings_dir) == tmp_path.resolve() / "my-mappings"
    assert settings.path(settings.report.output_dir) == tmp_path.resolve() / "out/reports"


def test_env_overrides_file_including_nested_lists(tmp_path, monkeypatch):
    monkeypatch.setenv("CMDB_SERVICENOW__PASSWORD", "from-env")
    monkeypatch.setenv("CMDB_AWS__REGIONS", '["ap-south-1"]')
    monkeypatch.setenv("CMDB_RECONCILE__RETIRE", "false")
    settings = load_settings(write(tmp_path, GOOD))
    assert settings.servicenow.password.get_secret_value() == "from-env"
    assert settings.aws.regions == ["ap-south-1"]
    assert settings.reconcile.retire is False


def test_a_secret_may_come_from_a_file_named_by_its_variable(tmp_path, monkeypatch, caplog):
    """systemd's LoadCredential, a container's secret: CMDB_<SECTION>__<KEY>_FILE, one trailing line break
    dropped; over the config file's value, as its variable would be."""
    secret = tmp_path / "servicenow-password"
    secret.write_text("from-a-file\n")
    secret.chmod(0o600)
    external = tmp_path / "external-id"
    external.write_text("ext-from-file")
    external.chmod(0o644)  # others may read it: said, by path, never by value
    monkeypatch.setenv("CMDB_SERVICENOW__PASSWORD_FILE", str(secret))
    monkeypatch.setenv("CMDB_AWS__EXTERNAL_ID_FILE", str(external))
    settings = load_settings(write(tmp_path, GOOD))
    assert settings.servicenow.password.get_secret_value() == "from-a-file"
    assert settings.aws.external_id.get_secret_value() == "ext-from-file"
    assert f"{external} (from CMDB_AWS__EXTERNAL_ID_FILE) may be read by other users" in caplog.text
    assert "ext-from-file" not in caplog.text


@pytest.mark.parametrize("content, extra, expected", [
    (None, {}, "CMDB_SERVICENOW__PASSWORD_FILE: cannot read {path}: No such file or directory"),
    ("\n", {}, "CMDB_SERVICENOW__PASSWORD_FILE: {path} is empty"),
    ("s3cret-value", {"CMDB_SERVICENOW__PASSWORD": "s3cret-other"},
     "CMDB_SERVICENOW__PASSWORD and CMDB_SERVICENOW__PASSWORD_FILE are both set: set one of them"),
])
def test_a_secret_file_that_cannot_be_used_is_named_never_its_content(tmp_path, monkeypatch, content, extra, expected):
    path = tmp_path / "secret"
    if content is not None:
        path.write_text(content)
    monkeypatch.setenv("CMDB_SERVICENOW__PASSWORD_FILE", str(path))
    for name, value in extra.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, GOOD))
    assert str(info.value) == expected.format(path=path)
    assert "s3cret" not in str(info.value)


def test_secrets_are_masked_in_repr(tmp_path):
    settings = load_settings(write(tmp_path, GOOD))
    text = repr(settings) + str(settings) + settings.model_dump_json()
    assert "hunter2-secret" not in text
    assert "ext-id-123" not in text


BAD_CASES = [
    (
        GOOD.replace('username = "svc"', 'usernme = "svc"'),
        ["[servicenow] usernme: unknown key (did you mean 'username'?). Fix: remove it or correct the spelling; "
         "known keys here:", "username"],
    ),
    (
        # a key in the wrong section, or at the top: where it belongs
        GOOD.replace('regions = ["us-east-1", "eu-west-1"]', "").replace("[aws]", 'regions = ["us-east-1"]\n[aws]')
        .replace("[report]", "[report]\nworkers = 4"),
        ["  regions: unknown key here (regions is a key of [aws]). Fix: move it to [aws]; known keys here: aws,",
         "  [report] workers: unknown key here (workers is a key of [servicenow]). Fix: move it to [servicenow];"],
    ),
    (
        GOOD.replace('username = "svc"', ""),
        ["servicenow: auth = 'basic' needs username (CMDB_SERVICENOW__USERNAME)"],
    ),
    (
        GOOD.replace('username = "svc"', 'auth = "oauth_client_credentials"'),
        ["servicenow: auth = 'oauth_client_credentials' needs client_id (CMDB_SERVICENOW__CLIENT_ID), "
         "client_secret (CMDB_SERVICENOW__CLIENT_SECRET)"],
    ),
    (
        GOOD.replace('username = "svc"', 'auth = "kerberos"'),
        ["[servicenow] auth: Input should be 'basic', 'oauth_password' or 'oauth_client_credentials'"],
    ),
    (
        GOOD.replace("[report]", "[reprot]"),
        ["reprot: unknown key (did you mean 'report'?)"],
    ),
    (
        GOOD.replace('regions = ["us-east-1", "eu-west-1"]', 'regions = "us-east-1"'),
        ['[aws] regions: a list, as ["a", "b"], not a text. Fix: write it as a list: regions = ["us-east-1"]'],
    ),
    (
        GOOD.replace('external_id = "ext-id-123"', 'session_duration_seconds = 900'),
        ["[aws] external_id: required key is missing", "CMDB_AWS__EXTERNAL_ID",
         "[aws] session_duration_seconds: must be at least 1800"],
    ),
    (
        # the whole section left out: named by the keys it needs, each with its variable
        GOOD.replace('[aws]\nexternal_id = "ext-id-123"\nregions = ["us-east-1", "eu-west-1"]', ""),
        ["[aws] external_id: required key is missing. Fix: set it in the file or with CMDB_AWS__EXTERNAL_ID"],
    ),
    (
        GOOD.replace('external_id = "ext-id-123"', 'external_id = "has spaces!"'),
        ["[aws] external_id: must be 2 to 1224 characters"],
    ),
    (
        GOOD.replace('instance_url = "https://acme.service-now.com/"', 'instance_url = "acme"'),
        ["[servicenow] instance_url: must start with https://"],
    ),
    # the address a browser shows, pasted: every API call would go to a page
    (
        GOOD.replace('instance_url = "https://acme.service-now.com/"',
                     'instance_url = "https://acme.service-now.com/now/nav/ui/classic/params/target/cmdb_ci.do"'),
        ["[servicenow] instance_url: the instance's address only, as https://acme.service-now.com: this is the "
         "address of one of its pages"],
    ),
    (
        GOOD.replace('instance_url = "https://acme.service-now.com/"',
                     'instance_url = "https://acme.service-now.com/nav_to.do?uri=cmdb_ci_list.do"'),
        ["[servicenow] instance_url: the instance's address only, as https://acme.service-now.com"],
    ),
    (
        GOOD.replace('username = "svc"', 'username = "svc'),
        ["invalid TOML", "(at line 8, column 16)"],
    ),
    (
        GOOD.replace("[aws]", "[aws]\naccounts = [123]"),
        ['[aws] accounts[0]: a text in quotes, not a whole number. Fix: put it in quotes: "123"'],
    ),
    # A value of the wrong TOML type is not coerced as the environment's texts are: each is likelier a slip.
    (
        GOOD.replace("[reconcile]", "[reconcile]\nmax_retire_fraction = true"),
        ["[reconcile] max_retire_fraction: a number, not the boolean true. Fix: correct the value"],
    ),
    (
        GOOD.replace('username = "svc"', 'username = "svc"\nverify_tls = 0\nmax_retry_seconds = "300"'),
        ["[servicenow] verify_tls: true or false, not a whole number. Fix: write verify_tls = false",
         "[servicenow] max_retry_seconds: a number, not a text. "
         "Fix: write it without the quotes: max_retry_seconds = 300"],
    ),
    (
        GOOD.replace('password = "hunter2-secret"', "password = 20240101\npage_size = 1.5"),
        ['[servicenow] password: a text in quotes, not a whole number. Fix: put it in quotes: password = "..."',
         "[servicenow] page_size: a whole number, not a number with a fraction. Fix: correct the value"],
    ),
    # a region misspelled would be collected as one not enabled (skipped): every run, nothing there
    (
        GOOD.replace('regions = ["us-east-1", "eu-west-1"]', 'regions = ["us-east1", "eu-west-1"]'),
        ["[aws] regions: not region names: ['us-east1']; a region is named like us-east-1"],
    ),
    (
        GOOD.replace('regions = ["us-east-1", "eu-west-1"]', 'regions = ["all", "eu-west-1"]'),
        ['[aws] regions: "all" stands alone'],
    ),
    (
        GOOD.replace('regions = ["us-east-1", "eu-west-1"]', 'regions = ["eu-west-1", "eu-west-1"]'),
        ["[aws] regions: listed more than once: ['eu-west-1']"],
    ),
]


@pytest.mark.parametrize("text, expected", BAD_CASES)
def test_bad_config_names_file_key_and_fix(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert message.startswith(str(path))
    for part in expected:
        assert part in message
    # secrets are never echoed, even in an error
    assert "hunter2-secret" not in message
    assert "has spaces!" not in message
    assert "20240101" not in message


def test_a_key_its_variable_overrides_is_not_type_checked_in_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("CMDB_RECONCILE__MAX_RETIRE_FRACTION", "0.5")
    settings = load_settings(write(tmp_path, GOOD.replace("[reconcile]", "[reconcile]\nmax_retire_fraction = true")))
    assert settings.reconcile.max_retire_fraction == 0.5


def test_bad_value_from_env_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("CMDB_SERVICENOW__PAGE_SIZE", "lots")
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, GOOD))
    assert "[servicenow] page_size from CMDB_SERVICENOW__PAGE_SIZE" in str(info.value)


def test_a_list_variable_not_in_json_is_named_with_its_fix_and_no_traceback(tmp_path, monkeypatch, capsys):
    """``CMDB_AWS__REGIONS=us-east-1``: pydantic-settings decodes a list's variable as JSON, and its own error
    names neither the variable nor the fix. A whole section's variable is told the same way, its value never
    shown (it would hold the section's secrets)."""
    monkeypatch.setenv("CMDB_AWS__REGIONS", "us-east-1")
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, GOOD))
    assert str(info.value) == ("environment: invalid configuration\n  CMDB_AWS__REGIONS: is not a JSON list. "
                               "Fix: write it as JSON: CMDB_AWS__REGIONS='[\"us-east-1\", \"eu-west-1\"]'")
    monkeypatch.setenv("CMDB_AWS__REGIONS", '["us-east-1"]')
    monkeypatch.setenv("CMDB_SERVICENOW", "{password: s3cret-value")
    monkeypatch.setenv("CMDB_AWS__EXCLUDE_ACCOUNTS", '["111111111111",')
    config = write(tmp_path, GOOD)
    assert main(["validate", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "s3cret-value" not in err
    assert "CMDB_AWS__EXCLUDE_ACCOUNTS: is not a JSON list. Fix: write it as JSON: " \
           "CMDB_AWS__EXCLUDE_ACCOUNTS='[\"first\", \"second\"]'" in err
    assert "CMDB_SERVICENOW: is not a JSON object. Fix: set its keys one by one, as CMDB_SERVICENOW__<KEY>" in err


def test_a_misspelled_variable_is_named_whether_its_key_or_its_section_is_wrong(tmp_path, monkeypatch):
    """The file is checked key by key; so is the environment: a variable that would be ignored is an error."""
    monkeypatch.setenv("CMDB_SERVICENOW__PASWORD", "s3cret-value")
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, GOOD))
    assert "[servicenow] pasword from CMDB_SERVICENOW__PASWORD: unknown key" in str(info.value)
    monkeypatch.delenv("CMDB_SERVICENOW__PASWORD")
    monkeypatch.setenv("CMDB_SERVICENOWW__PASSWORD", "s3cret-value")
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, GOOD))
    message = str(info.value)
    assert message.splitlines()[1] == ("  CMDB_SERVICENOWW__PASSWORD: there is no section [servicenoww]. Fix: correct "
                                       "the variable's name (CMDB_<SECTION>__<KEY>); the sections are aws, reconcile, "
                                       "report, servicenow")
    assert "s3cret-value" not in message
    monkeypatch.setenv("CMDB_SERVICENOW__PAGE_SIZE", "lots")  # with an error of the file's keys: both are listed
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, GOOD))
    assert "CMDB_SERVICENOW__PAGE_SIZE" in str(info.value) and "CMDB_SERVICENOWW__PASSWORD" in str(info.value)
    monkeypatch.delenv("CMDB_SERVICENOWW__PASSWORD")
    monkeypatch.delenv("CMDB_SERVICENOW__PAGE_SIZE")
    monkeypatch.setenv("CMDB_CONFIG", "elsewhere.toml")  # not a setting: no "__", never refused
    assert load_settings(write(tmp_path, GOOD)).servicenow.page_size > 0


def test_config_lookup_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="no config: pass --config PATH"):
        find_config(None)
    other = tmp_path / "elsewhere.toml"
    other.write_text(GOOD)
    monkeypatch.setenv("CMDB_CONFIG", str(other))
    assert find_config(None) == other
    write(tmp_path, GOOD)
    assert find_config(None) == Path("config.toml")
    with pytest.raises(ConfigError, match="missing.toml: config file not found"):
        find_config("missing.toml")
    # a folder named, as --config /etc/cmdb-connector: said so, with the file to name
    with pytest.raises(ConfigError) as info:
        find_config(str(tmp_path))
    assert str(info.value) == f"{tmp_path}: a folder, not a config file: name the file, as {tmp_path / 'config.toml'}"
    monkeypatch.chdir("/")
    monkeypatch.setenv("CMDB_CONFIG", str(tmp_path))
    with pytest.raises(ConfigError, match=r"a folder, not a config file \(from \$CMDB_CONFIG\)"):
        find_config(None)


def test_cli_reports_bad_config_with_exit_2_and_no_traceback(tmp_path):
    path = write(tmp_path, GOOD.replace("[report]", "[reprot]"))
    proc = subprocess.run(
        [sys.executable, "-m", "connector.cli", "--config", str(path), "validate"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "reprot: unknown key" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_example_config_is_valid_with_secrets_from_env(monkeypatch, capsys):
    monkeypatch.setenv("CMDB_AWS__EXTERNAL_ID", "example-external-id")
    monkeypatch.setenv("CMDB_SERVICENOW__PASSWORD", "example-password")
    assert main(["--config", str(REPO / "config.example.toml"), "validate"]) == 0
    out = capsys.readouterr().out
    assert "mappings OK: 18 files, 17 classes" in out
    assert "tags: off (reconcile.tags = false); 14 classes map them" in out
    monkeypatch.setenv("CMDB_RECONCILE__TAGS", "true")
    assert main(["--config", str(REPO / "config.example.toml"), "validate"]) == 0
    assert "tags to cmdb_key_value (reconcile.tags = true) for 14 classes: cmdb_ci_aws_org_unit, cmdb_ci_cloud_database, " in capsys.readouterr().out


def test_example_config_lists_every_key():
    from connector.settings import AwsSettings, ReconcileSettings, ReportSettings, ServiceNowSettings

    text = (REPO / "config.example.toml").read_text()
    for model in (AwsSettings, ServiceNowSettings, ReconcileSettings, ReportSettings):
        for name in model.model_fields:
            assert name in text, f"config.example.toml does not mention {name}"


def test_a_config_saved_with_a_byte_order_mark_loads(tmp_path):
    path = tmp_path / "config.toml"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    assert load_settings(path).servicenow.page_size > 0
    path.write_bytes(GOOD.encode("utf-16"))
    with pytest.raises(ConfigError, match=r"config.toml: not UTF-8 text \(byte 1 is not UTF-8\): save the file as UTF-8"):
        load_settings(path)


def test_a_secret_in_a_file_others_may_read_is_warned_of_by_key_never_by_value(tmp_path, caplog):
    path = tmp_path / "config.toml"
    path.write_text(GOOD)  # its ExternalId and password in the file
    path.chmod(0o644)
    load_settings(path)
    [warning] = [r.getMessage() for r in caplog.records if r.name == "connector.settings"]
    assert warning.startswith(f"{path} holds aws.external_id, servicenow.password and other users of this host may "
                              "read it (mode 644): chmod 600 it")
    assert "CMDB_AWS__EXTERNAL_ID, CMDB_SERVICENOW__PASSWORD" in warning
    assert "hunter2-secret" not in warning and "ext-id-123" not in warning
    caplog.clear()
    path.chmod(0o600)
    load_settings(path)
    assert [r for r in caplog.records if r.name == "connector.settings"] == []


@pytest.mark.parametrize("url", ["http://acme.service-now.com", "http://10.0.0.5:8080", "http://SNOW.corp"])
def test_plain_http_to_another_host_is_refused_since_it_would_send_the_credentials_in_clear(tmp_path, url):
    path = write(tmp_path, GOOD.replace("https://acme.service-now.com/", url))
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    host = url.split("//")[1].split(":")[0].lower()
    assert f"[servicenow] instance_url: http:// would send the credentials to {host} in clear text: use https://" \
        in str(caught.value)
    assert "hunter2-secret" not in str(caught.value)


@pytest.mark.parametrize("url", ["https://svc:hunter3-url@acme.service-now.com",
                                 "http://svc:hunter3-url@127.0.0.1:8080"])
def test_a_password_in_the_instance_url_is_refused_and_never_shown(tmp_path, monkeypatch, url):
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, GOOD.replace("https://acme.service-now.com/", url)))
    assert "[servicenow] instance_url: must not hold a user name or password (user:password@)" in str(caught.value)
    assert "hunter3-url" not in str(caught.value)
    monkeypatch.setenv("CMDB_SERVICENOW__INSTANCE_URL", url)
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, GOOD))
    assert "instance_url from CMDB_SERVICENOW__INSTANCE_URL: must not hold" in str(caught.value)
    assert "hunter3-url" not in str(caught.value)


@pytest.mark.parametrize("url", ["http://127.0.0.1:40457", "http://localhost:8080/", "http://[::1]:9000",
                                 "http://127.0.0.2"])
def test_plain_http_to_this_host_is_taken_for_a_stand_in(tmp_path, url):
    settings = load_settings(write(tmp_path, GOOD.replace("https://acme.service-now.com/", url)))
    assert settings.servicenow.instance_url == url.rstrip("/")


def test_tls_left_unchecked_is_warned_of_on_every_load(tmp_path, caplog):
    path = write(tmp_path, GOOD + "")
    path.chmod(0o600)
    load_settings(path)
    assert [r for r in caplog.records if r.name == "connector.settings"] == []
    path.write_text(GOOD.replace('username = "svc"', 'username = "svc"\nverify_tls = false\nca_bundle = "ca.pem"'))
    load_settings(path)
    [warning] = [r.getMessage() for r in caplog.records if r.name == "connector.settings"]
    assert warning == ("servicenow.verify_tls = false: the certificate of acme.service-now.com is not checked, so "
                       "whoever answers in its place gets the credentials (servicenow.ca_bundle is then not used); "
                       "name your proxy's CA in servicenow.ca_bundle instead")


def test_region_names_of_every_partition_and_all_are_taken(tmp_path):
    for regions in ('["all"]', '["us-gov-west-1", "cn-north-1", "eu-isoe-west-1", "ap-southeast-5"]'):
        text = GOOD.replace('regions = ["us-east-1", "eu-west-1"]', f"regions = {regions}")
        assert load_settings(write(tmp_path, text)).aws.regions


def test_a_ca_bundle_is_resolved_against_the_config_folder_and_must_hold_certificates(tmp_path, monkeypatch):
    """A relative ca_bundle was looked for in the working folder (under systemd, /), so every request failed
    TLS; and a wrong path or a file that is no PEM bundle showed only then, as that TLS failure."""
    import shutil

    import certifi

    from connector.servicenow.client import TableClient

    folder = tmp_path / "conf"
    folder.mkdir()
    shutil.copy(certifi.where(), folder / "corp-ca.pem")
    monkeypatch.chdir("/")
    text = GOOD.replace('username = "svc"', 'username = "svc"\nca_bundle = "corp-ca.pem"')
    settings = load_settings(write(folder, text))
    assert settings.servicenow.ca_bundle == folder.resolve() / "corp-ca.pem"
    assert TableClient(settings.servicenow)._new_session().verify == str(folder.resolve() / "corp-ca.pem")
    (folder / "corp-ca.pem").write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"\[servicenow\] ca_bundle: .*corp-ca.pem: \[X509: NO_CERTIFICATE"):
        load_settings(write(folder, text))
    (folder / "corp-ca.pem").unlink()
    with pytest.raises(ConfigError) as info:
        load_settings(write(folder, text))
    assert f"  [servicenow] ca_bundle: {folder.resolve() / 'corp-ca.pem'}: No such file or directory. Fix: " \
           "name the PEM file of the CA certificates to trust" in str(info.value)
    # not checked, nor used, where TLS is not verified (a warning says so)
    assert load_settings(write(folder, text.replace("ca_bundle", "verify_tls = false\nca_bundle"))).servicenow


def test_an_instance_served_under_a_path_by_a_proxy_is_taken(tmp_path):
    text = GOOD.replace('instance_url = "https://acme.service-now.com/"', 'instance_url = "https://gw.corp.example/sn/"')
    assert load_settings(write(tmp_path, text)).servicenow.instance_url == "https://gw.corp.example/sn"
