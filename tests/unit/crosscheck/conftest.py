"""An extra cross-check against Stripe's own fixture files, for checkouts that have them.

Some checkouts sit next to a `shared/stripe-fixtures` folder of Stripe's published
fixture objects (not part of this repository). When it is there, the tests in this
folder also parse those; when it is not (a plain clone), they are not collected at all,
and tests/unit/test_stripe_fixtures.py checks the project's own samples either way.
"""

from __future__ import annotations

from pathlib import Path

STRIPE_FIXTURES = Path(__file__).resolve().parents[3].parent / "shared" / "stripe-fixtures"

collect_ignore_glob = [] if STRIPE_FIXTURES.is_dir() else ["test_*.py"]
