"""ARN helpers: the partition of a region, and account and region of an identity."""

from __future__ import annotations

from .models import GLOBAL_REGION


def partition_for(region: str) -> str:
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def account_and_region(identity: str) -> tuple[str, str] | None:
    """(account, region) of an ARN-shaped identity; region "global" when empty.

    ``None`` when the identity is not ARN-shaped or names no account: such a CI
    has no known scope, so it is never retired.
    """
    parts = identity.split(":", 5)
    if len(parts) != 6 or parts[0] != "arn" or not parts[4].isdigit():
        return None
    return parts[4], parts[3] or GLOBAL_REGION
