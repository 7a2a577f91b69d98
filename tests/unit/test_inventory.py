"""The inventory file (collect --output, run --inventory): written, read back, and bad lines named."""

from __future__ import annotations

import pytest

from connector.errors import InventoryError
from connector.inventory import read_inventory, write_inventory
from connector.sandbox.synthetic import synthetic_inventory


def test_written_then_read_back_whole(tmp_path):
    inventory = synthetic_inventory(accounts=2, instances=2)
    path = tmp_path / "inventory.jsonl"
    write_inventory(inventory, path)
    again = read_inventory(path)
    assert again.records == inventory.records and again.scopes == inventory.scopes
    assert [a.account_id for a in again.accounts] == [a.account_id for a in inventory.accounts]


def test_the_accounts_targeted_go_with_it_and_none_stays_none(tmp_path):
    inventory = synthetic_inventory(accounts=2, instances=1)
    path = tmp_path / "inventory.jsonl"
    write_inventory(inventory, path)
    assert read_inventory(path).targeted is None  # not known (another tool's file): no account is named
    inventory.targeted = frozenset({"111111111111", "222222222222"})
    write_inventory(inventory, path)
    assert read_inventory(path).targeted == inventory.targeted


def test_a_byte_order_mark_before_the_first_line_is_skipped(tmp_path):
    inventory = synthetic_inventory(accounts=1, instances=1)
    path = tmp_path / "inventory.jsonl"
    write_inventory(inventory, path)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert read_inventory(path).records == inventory.records


@pytest.mark.parametrize("line, reason", [
    (b'{"kind": "resource", "account_id": "1"}', "no 'region' in this line"),
    (b"[1, 2]", "not a JSON object but list"),
    (b'{"kind": "gadget"}', "unknown kind 'gadget'"),
    (b'{"kind": "scope", "account_id": "1", "region": "r", "source": "s", "status": "fine"}', "unknown status 'fine'"),
    ("{}".encode("utf-16"), "not UTF-8 text: save the file as UTF-8"),
    (b"not json", "invalid literal"),
    (b'{"kind": "targeted_accounts", "account_ids": "111111111111"}', "account_ids is not a list of account ids"),
    (b'{"kind": "targeted_accounts"}', "no 'account_ids' in this line"),
])
def test_a_bad_line_is_named_with_its_number_and_why(tmp_path, line, reason):
    path = tmp_path / "inventory.jsonl"
    path.write_bytes(b'{"kind": "scope", "account_id": "1", "region": "r", "source": "s", "status": "ok"}\n\n' + line + b"\n")
    with pytest.raises(InventoryError) as info:
        read_inventory(path)
    assert str(info.value).startswith(f"{path}: line 3: {reason}")
