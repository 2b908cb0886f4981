"""`refstream topics create` makes the topics of docs/design.md with their configs; twice is harmless."""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from click.testing import CliRunner

from refstream.cli import main
from refstream.commands.topics import create_topics
from schemas.topics import Topics


async def _describe(bootstrap: str, names: list[str]) -> tuple[dict[str, int], dict[str, dict[str, str]]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        partitions = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics()
                      if t["topic"] in names}
        configs = {}
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in names])
        for response in responses:
            for _, _, _, name, entries in response.resources:
                configs[name] = {e[0]: e[1] for e in entries}
        return partitions, configs
    finally:
        await admin.close()


def test_cli_creates_both_environments_topics_and_twice_is_harmless(
    bootstrap: str, topic_prefix: str, monkeypatch
) -> None:
    monkeypatch.setenv("REFSTREAM_KAFKA_BOOTSTRAP", bootstrap)
    runner = CliRunner()
    first = runner.invoke(main, ["topics", "create", "--prefix", topic_prefix, "--partitions", "4"])
    assert first.exit_code == 0, first.output
    assert first.output.count("created") == 16  # 8 per environment
    second = runner.invoke(main, ["topics", "create", "--prefix", topic_prefix, "--partitions", "4"])
    assert second.exit_code == 0, second.output
    assert second.output.count("exists") == 16 and "created" not in second.output


async def test_topics_have_their_partitions_and_retention(bootstrap: str, topic_prefix: str) -> None:
    results = await create_topics(bootstrap, ["sandbox"], prefix=topic_prefix, partitions=4)
    topics = Topics("sandbox", topic_prefix)
    assert {r.name for r in results} == {s.name for s in topics.specs()}
    names = [s.name for s in topics.specs()]
    partitions, configs = await _describe(bootstrap, names)
    assert partitions[topics.stripe_events] == 4
    assert partitions[topics.control] == 1
    # the stripe-events log is the source of truth: kept forever
    assert configs[topics.stripe_events]["retention.ms"] == "-1"
    assert configs[topics.stripe_events]["retention.bytes"] == "-1"
    assert configs[topics.payouts]["retention.ms"] != "-1"
    # review cases are kept for as long as they exist: compacted, never deleted for age, and
    # with the outputs' partitions (the publisher writes each to its referrer's partition)
    assert configs[topics.review_cases]["cleanup.policy"] == "compact"
    assert configs[topics.review_cases]["retention.ms"] == "-1"
    assert partitions[topics.review_cases] == partitions[topics.reviews] == 4
    again = await create_topics(bootstrap, ["sandbox"], prefix=topic_prefix, partitions=4)
    assert {r.status for r in again} == {"exists"}


def test_cli_names_an_unreachable_broker_and_the_fix(monkeypatch) -> None:
    monkeypatch.setenv("REFSTREAM_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    result = CliRunner().invoke(main, ["topics", "create"])
    assert result.exit_code == 1
    assert "not reachable" in result.output and "refstream kafka up" in result.output


async def test_a_delivery_before_topics_create_gets_503_and_no_topic_is_auto_created(
    bootstrap: str, topic_prefix: str
) -> None:
    import json

    from tests.conftest import FIXTURES, sign
    from tests.ingest.helpers import SANDBOX_SECRET, body_of, envelope, running_ingest, settings

    customer = json.loads((FIXTURES / "current" / "customer.json").read_text())
    body = body_of(envelope(customer, "customer.created", livemode=False, event_id="evt_too_early"))
    async with running_ingest(settings(bootstrap), topic_prefix) as client:
        resp = await client.post("/webhooks/stripe/sandbox", data=body,
                                 headers={"Stripe-Signature": sign(body, SANDBOX_SECRET)})
        assert resp.status == 503
        error = (await resp.json())["error"]
        assert error["code"] == "topic_missing"
        assert "refstream topics create" in error["message"]
    # the broker auto-creates topics on request, but ingest never asks it to: the log must
    # get the configs `topics create` gives it
    partitions, _ = await _describe(bootstrap, [Topics("sandbox", topic_prefix).stripe_events])
    assert partitions == {}
