"""ACME Telecom's own stirgate policies: a worked example of a third-party policy package."""
