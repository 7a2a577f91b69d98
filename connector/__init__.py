"""cmdb-connector: keep a ServiceNow CMDB true to what runs in AWS.

The pipeline, one direction only:
    accounts -> sessions -> collect -> map -> plan -> apply -> report
"""

__version__ = "0.1.0"
