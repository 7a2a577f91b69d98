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


def test_with_a_sink_the_resources_go_to_it_a_batch_at_a_time_in_order_and_the_inventory_keeps_none(
        tmp_path, monkeypatch):
    import connector.inventory as module

    monkeypatch.setattr(module, "SINK_BATCH", 7)
    inventory = synthetic_inventory(accounts=2, instances=3)
    path = tmp_path / "inventory.jsonl"
    write_inventory(inventory, path)
    batches: list[list] = []
    again = read_inventory(path, sink=lambda batch: batches.append(list(batch)))
    assert again.records == [] and again.scopes == inventory.scopes
    assert [r for batch in batches for r in batch] == inventory.records
    assert len(batches) > 2 and all(len(b) == 7 for b in batches[:-1]) and 0 < len(batches[-1]) <= 7


def test_a_collect_stopped_midway_leaves_the_file_as_it_was_and_nothing_beside_it(tmp_path):
    from connector.inventory import InventoryWriter

    before = synthetic_inventory(accounts=1, instances=1)
    path = tmp_path / "inventory.jsonl"
    write_inventory(before, path)
    kept = path.read_bytes()
    writer = InventoryWriter(path)
    writer.resources(synthetic_inventory(accounts=2, instances=3).records)  # a unit or two in, then stopped
    assert path.read_bytes() == kept  # until finished, the resources go beside it
    writer.abort()
    assert path.read_bytes() == kept and [p.name for p in tmp_path.iterdir()] == ["inventory.jsonl"]
    with pytest.raises(KeyboardInterrupt):  # stopped within the with block: the same
        with InventoryWriter(path) as writer:
            writer.resources(before.records)
            raise KeyboardInterrupt
    assert path.read_bytes() == kept and [p.name for p in tmp_path.iterdir()] == ["inventory.jsonl"]
    after = synthetic_inventory(accounts=2, instances=3)
    writer = InventoryWriter(path)
    writer.resources(after.records[:5])
    writer.resources(after.records[5:])
    writer.finish(after)
    again = read_inventory(path)
    assert (again.records, again.scopes, writer.written) == (after.records, after.scopes, len(after.records))
    assert [p.name for p in tmp_path.iterdir()] == ["inventory.jsonl"]


def test_two_collects_into_one_path_write_apart_and_the_one_that_finishes_is_kept(tmp_path):
    from connector.inventory import InventoryWriter

    path = tmp_path / "inventory.jsonl"
    ours, theirs = synthetic_inventory(accounts=1, instances=2), synthetic_inventory(accounts=2, instances=1)
    with InventoryWriter(path) as first, InventoryWriter(path) as second:
        first.resources(ours.records)
        second.resources(theirs.records)
        first.finish(ours)
        second.abort()  # the other one stopped midway: what the first wrote stays whole
    assert read_inventory(path).records == ours.records
    assert [p.name for p in tmp_path.iterdir()] == ["inventory.jsonl"]


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
    # another tool's inventory, or one edited by hand: a value of the wrong type is named, not mapped as if absent
    (b'{"kind": "resource", "account_id": "1", "region": "r", "source": "s", "resource": {}}',
     "account_id '1' is not an account id (12 digits, as a text)"),
    (b'{"kind": "resource", "account_id": 111111111111, "region": "r", "source": "s", "resource": {}}',
     "account_id 111111111111 is not an account id (12 digits, as a text)"),
    (b'{"kind": "resource", "account_id": "111111111111", "region": null, "source": "s", "resource": {}}',
     "region None is not a region name (a text)"),
    (b'{"kind": "scope", "account_id": "111111111111", "region": "r", "source": "", "status": "ok"}',
     "source '' is not a source name (a text)"),
    (b'{"kind": "resource", "account_id": "111111111111", "region": "r", "source": "s", "resource": "i-1"}',
     "resource is not a JSON object but a text"),
    (b'{"kind": "scope", "account_id": "111111111111", "region": "r", "source": "s", "status": "error", "error": {}}',
     "error is not a text but an object"),
    (b'{"kind": "account", "account_id": "12345"}', "account_id '12345' is not an account id"),
    (b'{"kind": "account", "account_id": "111111111111", "raw": ["Name"]}', "raw is not a JSON object but a list"),
    (b'{"kind": "account", "account_id": "111111111111", "name": 7}', "name is not a text but a number"),
    (b'{"kind": "account", "account_id": "111111111111", "status": "gone"}', "unknown status 'gone'"),
    (b'{"kind": "targeted_accounts", "account_ids": ["12345"]}', "account_ids is not a list of account ids"),
    ("{}".encode("utf-16"), "not UTF-8 text: save the file as UTF-8"),
    (b"not json", "invalid literal"),
    (b'{"kind": "targeted_accounts", "account_ids": "111111111111"}', "account_ids is not a list of account ids"),
    (b'{"kind": "targeted_accounts"}', "no 'account_ids' in this line"),
])
def test_a_bad_line_is_named_with_its_number_and_why(tmp_path, line, reason):
    path = tmp_path / "inventory.jsonl"
    first = b'{"kind": "scope", "account_id": "111111111111", "region": "r", "source": "s", "status": "ok"}'
    path.write_bytes(first + b"\n\n" + line + b"\n")
    with pytest.raises(InventoryError) as info:
        read_inventory(path)
    assert str(info.value).startswith(f"{path}: line 3: {reason}")
