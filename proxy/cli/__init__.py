"""The command line: arguments, the commands (serve, token, demo) and exit statuses."""
