"""Human review: the desk reviewers work at (leases, decisions, progress), its web UI and Label Studio interchange."""
