"""build-context: reproducible container build contexts from remediation source."""

__version__ = "0.1.0"
