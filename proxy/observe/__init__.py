"""Observation: logs, metrics and the redaction of gateway text. Depends on nothing above it."""
