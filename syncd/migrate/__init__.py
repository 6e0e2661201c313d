"""Moving in from other tools: reading mbsync's and offlineimap's configs (`syncd import`), their
state (`syncd adopt`), and finding an address's servers (`syncd init ADDRESS`).

Nothing here ever writes into a Maildir; the only writes are syncd's own config (as text,
comments kept) and syncd's own state database."""
