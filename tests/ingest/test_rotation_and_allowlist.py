"""Secret rotation, and event types refstream does not use."""

from __future__ import annotations

import json

from schemas.topics import Topics
from tests.conftest import FIXTURES, sign
from tests.ingest.helpers import (
    SANDBOX_OLD_SECRET,
    SANDBOX_SECRET,
    body_of,
    end_offsets,
    envelope,
    make_topics,
    read_topic,
    running_ingest,
    settings,
)

CUSTOMER = json.loads((FIXTURES / "current" / "customer.json").read_text())


async def test_during_rotation_an_event_signed_with_either_secret_is_accepted(
    bootstrap: str, topic_prefix: str
) -> None:
    await make_topics(bootstrap, topic_prefix, envs=["sandbox"])
    bodies = [body_of(envelope(CUSTOMER, "customer.updated", livemode=False, event_id=f"evt_rot{i}"))
              for i in range(3)]
    async with running_ingest(settings(bootstrap), topic_prefix) as client:
        for body, secret in zip(bodies, [SANDBOX_SECRET, SANDBOX_OLD_SECRET], strict=False):
            resp = await client.post("/webhooks/stripe/sandbox", data=body,
                                     headers={"Stripe-Signature": sign(body, secret)})
            assert resp.status == 200, await resp.text()
        # during a rotation Stripe sends one v1 per active secret; any match wins
        body = bodies[2]
        both = sign(body, "whsec_retired_long_ago") + "," + sign(body, SANDBOX_OLD_SECRET).split(",")[1]
        resp = await client.post("/webhooks/stripe/sandbox", data=body, headers={"Stripe-Signature": both})
        assert resp.status == 200, await resp.text()
    stored = await read_topic(bootstrap, Topics("sandbox", topic_prefix).stripe_events)
    assert sorted(r.value for r in stored) == sorted(bodies)


async def test_an_event_type_outside_the_allow_list_gets_200_and_is_not_written(
    bootstrap: str, topic_prefix: str
) -> None:
    await make_topics(bootstrap, topic_prefix, envs=["sandbox"])
    topic = Topics("sandbox", topic_prefix).stripe_events
    docs_example = (FIXTURES / "docs-example-event.setup_intent.created.json").read_bytes()
    plan_event = (FIXTURES / "current" / "event.json").read_bytes()
    async with running_ingest(settings(bootstrap), topic_prefix) as client:
        for body in (docs_example, plan_event):
            resp = await client.post("/webhooks/stripe/sandbox", data=body,
                                     headers={"Stripe-Signature": sign(body, SANDBOX_SECRET)})
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["stored"] is False
    assert sum((await end_offsets(bootstrap, topic)).values()) == 0
