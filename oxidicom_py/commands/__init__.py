"""Client commands: they talk to the database (and the files root), never to the receiver."""
