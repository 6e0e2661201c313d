"""IMAP: the client adapter, the light probe, the no-change check, the account sync."""
