"""The operator console (`refstream console`, docs/console.md): web pages over the log,
the review queue and the workers' health, whose every action is a control record."""
