"""servicenow."""
