"""The way to the gateway and back: headers, egress, TLS trust, the session, forwarding."""
