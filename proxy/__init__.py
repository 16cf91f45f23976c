"""instructure-auth-proxy: a local authenticating reverse proxy for Instructure's API gateway."""

__version__ = "0.1.0"

__all__ = ["__version__"]
