"""The stand-in's class model: tables, their parents and their fields.

Following the CMDB classes that ServiceNow's Service Graph Connector for AWS
uses. A write to a field the table does not have is ignored, and a query
condition on it is dropped, as on a real instance.
"""

from __future__ import annotations

from functools import lru_cache

from ..mapping.schema import BASE_RELATION_TYPES

SYS_FIELDS = (
    "sys_id", "sys_class_name", "sys_created_on", "sys_created_by",
    "sys_updated_on", "sys_updated_by", "sys_mod_count",
)

CI_FIELDS = (
    "name", "short_description", "install_status", "operational_status", "discovery_source",
    "correlation_id", "object_id", "first_discovered", "last_discovered", "company", "location",
    "asset_tag", "serial_number", "comments", "environment", "category", "subcategory",
    # who looks after it: references to users and groups, as on cmdb_ci
    "owned_by", "managed_by", "supported_by", "assigned_to", "support_group", "assignment_group",
)
USER_REFERENCES = ("owned_by", "managed_by", "supported_by", "assigned_to")
GROUP_REFERENCES = ("support_group", "assignment_group")

# table -> (parent table, own fields)
TABLES: dict[str, tuple[str | None, tuple[str, ...]]] = {
    "cmdb_ci": (None, CI_FIELDS),
    "cmdb_ci_cloud_org": ("cmdb_ci", ("master_email", "root_id")),
    "cmdb_ci_aws_org_unit": ("cmdb_ci", ("aws_org_id", "org_unit_parent_id", "root_id")),
    "cmdb_ci_cloud_service_account": ("cmdb_ci", ("account_id", "is_master_account", "organization_id", "datacenter_type")),
    "cmdb_ci_logical_datacenter": ("cmdb_ci", ("region",)),
    "cmdb_ci_aws_datacenter": ("cmdb_ci_logical_datacenter", ()),
    "cmdb_ci_availability_zone": ("cmdb_ci", ("zone_id",)),
    "cmdb_ci_network": ("cmdb_ci", ("cidr",)),
    "cmdb_ci_cloud_subnet": ("cmdb_ci", ("cidr", "available_ip_count")),
    "cmdb_ci_nic": ("cmdb_ci", ("ip_address", "mac_address")),
    "cmdb_ci_compute_security_group": ("cmdb_ci", ("description",)),
    "cmdb_ci_vm": ("cmdb_ci", ()),
    "cmdb_ci_vm_object": ("cmdb_ci", ()),
    "cmdb_ci_vm_instance": ("cmdb_ci_vm_object", ("vm_inst_id", "state", "cpus", "memory", "ip_address", "disks",
                                                  "disks_size", "nics")),
    "cmdb_ci_storage_volume": ("cmdb_ci", ("size", "storage_type", "size_bytes")),
    "cmdb_ci_cloud_load_balancer": ("cmdb_ci", ("dns_name", "type")),
    "cmdb_ci_cloud_database": ("cmdb_ci", ("type", "version", "tcp_port", "category")),
    "cmdb_ci_cloud_object_storage": ("cmdb_ci", ("location_constraint",)),
    "cmdb_ci_cloud_function": ("cmdb_ci", ("language", "code_size", "handler")),
    "cmdb_ci_dynamodb_table": ("cmdb_ci", ("table_size", "item_count")),
    "cmdb_ci_kubernetes_cluster": ("cmdb_ci", ("version", "ip_address")),
    "cmdb_ci_key_pair": ("cmdb_ci", ("fingerprint", "key_type")),
    "cmdb_key_value": (None, ("key", "value", "configuration_item")),
    "cmdb_rel_ci": (None, ("parent", "child", "type", "port", "percent_outage")),
    "cmdb_rel_type": (None, ("name", "parent_descriptor", "child_descriptor", "sys_name")),
    "sys_user": (None, ("user_name", "name", "email", "active")),
    "sys_user_group": (None, ("name", "email", "active", "manager")),
    # where IRE keeps each source's key of a CI (sys_object_source_info)
    "sys_object_source": (None, ("name", "id", "target_sys_id", "target_table", "last_scan")),
    # the dictionary, read-only: served from this module (see Store.rows)
    "sys_db_object": (None, ("name", "label", "super_class")),
    "sys_dictionary": (None, ("name", "element", "internal_type", "max_length")),
}
SCHEMA_TABLES = ("sys_db_object", "sys_dictionary")

# Fields that are not strings, by their type in sys_dictionary; every other field is a string
# of 255 characters, unless STRING_LENGTHS says otherwise.
FIELD_TYPES: dict[str, str] = {
    **dict.fromkeys(("install_status", "operational_status", "cpus", "memory", "disks", "disks_size", "nics", "size",
                     "size_bytes", "available_ip_count", "code_size", "table_size", "item_count", "tcp_port",
                     "percent_outage", "sys_mod_count", "max_length"), "integer"),
    **dict.fromkeys(("company", "location", "parent", "child", "type", "configuration_item", "super_class",
                     "manager", *USER_REFERENCES, *GROUP_REFERENCES), "reference"),
    **dict.fromkeys(("is_master_account", "active"), "boolean"),
    **dict.fromkeys(("first_discovered", "last_discovered", "sys_created_on", "sys_updated_on"), "glide_date_time"),
    "sys_id": "GUID",
}
# (table that defines the field, field) -> max_length, where it is not 255
STRING_LENGTHS: dict[tuple[str, str], int] = {
    ("cmdb_ci", "short_description"): 1000,
    ("cmdb_ci", "comments"): 4000,
    ("cmdb_ci_compute_security_group", "description"): 4000,
    ("cmdb_key_value", "value"): 4000,
}

# table -> {field: referenced table}
REFERENCES: dict[str, dict[str, str]] = {
    "sys_db_object": {"super_class": "sys_db_object"},
    "cmdb_rel_ci": {"parent": "cmdb_ci", "child": "cmdb_ci", "type": "cmdb_rel_type"},
    "cmdb_key_value": {"configuration_item": "cmdb_ci"},
    "cmdb_ci": {**dict.fromkeys(USER_REFERENCES, "sys_user"), **dict.fromkeys(GROUP_REFERENCES, "sys_user_group")},
    "sys_user_group": {"manager": "sys_user"},
}

REL_TYPES = BASE_RELATION_TYPES  # those of a base system


@lru_cache(maxsize=None)
def ancestors(table: str) -> tuple[str, ...]:
    chain = []
    current: str | None = table
    while current is not None:
        chain.append(current)
        current = TABLES[current][0]
    return tuple(chain)


@lru_cache(maxsize=None)
def fields_of(table: str) -> frozenset[str]:
    names = set(SYS_FIELDS)
    for t in ancestors(table):
        names.update(TABLES[t][1])
    return frozenset(names)


@lru_cache(maxsize=None)
def descendants(table: str) -> frozenset[str]:
    return frozenset(t for t in TABLES if table in ancestors(t))


@lru_cache(maxsize=None)
def references_of(table: str) -> dict[str, str]:
    refs: dict[str, str] = {}
    for t in ancestors(table):
        refs.update(REFERENCES.get(t, {}))
    return refs


def defining_table(table: str, field: str) -> str | None:
    """The table, ``table`` or one of its ancestors, whose own fields hold ``field``."""
    for t in ancestors(table):
        if field in TABLES[t][1] or (field in SYS_FIELDS and TABLES[t][0] is None):
            return t
    return None


def field_type(field: str) -> str:
    return FIELD_TYPES.get(field, "string")
