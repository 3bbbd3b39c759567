"""AuditoryHuM: unlabelled audio → model labels → alignment scores → human review → a taxonomy of scenes."""

__version__ = "0.1.0"
