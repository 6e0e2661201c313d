"""POP3: the client adapter and download-and-delete."""
