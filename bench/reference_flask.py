"""The reference handler bench/ingest.py compares against: Stripe's documented Flask route.

It verifies the signature with `stripe.Webhook.construct_event` and answers 200; it
writes nothing anywhere (no Kafka), so it is the cost of verification alone.
Run by the bench as `gunicorn bench.reference_flask:app`.
"""

from __future__ import annotations

import os

import stripe
from flask import Flask, jsonify, request

app = Flask(__name__)
endpoint_secret = os.environ["REFSTREAM_STRIPE_SECRETS_SANDBOX"].split(",")[0]


@app.route("/webhooks/stripe/sandbox", methods=["POST"])
def webhook():  # type: ignore[no-untyped-def]
    payload = request.data
    sig_header = request.headers.get("Stripe-Signature")
    try:
        event = stripe.Webhook.construct_event(payload, sig_header, endpoint_secret)
    except ValueError:
        return jsonify(success=False), 400
    except stripe.SignatureVerificationError:
        return jsonify(success=False), 400
    _ = event["type"]
    return jsonify(success=True)
