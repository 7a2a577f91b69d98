"""The connector's built-in mapping files, one TOML file per CMDB class.

This folder is installed as package data so that a `pip install` followed by a
run from any directory finds them. Edit the TOML files, not this one.
"""
