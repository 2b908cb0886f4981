"""An example receiver for `refstream deliver` (docs/cli.md#deliver).

refstream signs each delivery the way Stripe signs its webhooks, so the verification code
of Stripe's own library checks it: only the header's name differs.

    REFSTREAM_DELIVERY_SECRET=<the same secret as refstream's> python examples/receiver.py --port 8000

and point refstream at it: REFSTREAM_DELIVERY_URL=http://127.0.0.1:8000/refstream.

A record may arrive more than once (delivery is at least once): keep the ids you handled
and answer 2xx again for one you know. Answer 2xx only once the record is stored; any
other answer makes refstream try again later.
"""

from __future__ import annotations

import argparse
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import stripe

TOLERANCE_S = 300  # refuse signatures older than this: a replayed request


def verified(body: bytes, signature: str | None, secret: str,
             tolerance_s: int = TOLERANCE_S) -> dict[str, Any]:
    """The delivered record, once its `Refstream-Signature` is checked. Raises
    stripe.SignatureVerificationError when it does not match `secret` or is too old."""
    stripe.WebhookSignature.verify_header(body, signature, secret, tolerance_s)
    record: dict[str, Any] = json.loads(body)
    return record


class Receiver(BaseHTTPRequestHandler):
    secret = os.environ.get("REFSTREAM_DELIVERY_SECRET", "").split(",")[0].strip()
    seen: ClassVar[set[str]] = set()  # in a real receiver: a table with a unique key on the id

    def do_POST(self) -> None:  # the name http.server calls
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        try:
            record = verified(body, self.headers.get("Refstream-Signature"), self.secret)
        except (stripe.SignatureVerificationError, ValueError):
            self.send_response(400)  # not from refstream, or altered: refstream never gets a 2xx for it
            self.end_headers()
            return
        if record["id"] not in self.seen:  # the same id as the Idempotency-Key header
            self.seen.add(record["id"])
            data = record["data"]
            print(record["type"], data.get("kind", ""), data["ucc"], data.get("amount", ""), flush=True)
        self.send_response(204)
        self.end_headers()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    if not Receiver.secret:
        raise SystemExit("Set REFSTREAM_DELIVERY_SECRET to the secret refstream signs with.")
    ThreadingHTTPServer(("127.0.0.1", args.port), Receiver).serve_forever()
