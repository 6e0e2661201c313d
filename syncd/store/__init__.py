"""Local storage: Maildir folders and the SQLite sync state."""
