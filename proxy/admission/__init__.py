"""Admission: who may use the proxy, for which path and profile, and the local login."""
