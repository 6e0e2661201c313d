"""Credentials: password sources (command, keyring) and OAuth2."""
