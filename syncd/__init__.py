"""syncd: a local multi-account mail sync daemon (IMAP <-> Maildir, POP3 -> Maildir)."""

__version__ = "0.1.0"
