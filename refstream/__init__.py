"""The operator's side of refstream: settings, the `refstream` command, the dev broker."""
