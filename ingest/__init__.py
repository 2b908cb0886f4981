"""Ingest: verify a Stripe webhook, write it durably to Kafka, answer."""
