"""`refstream topics create`: the topics of docs/design.md#topics-and-keys with their
partitions and configs.

Idempotent: a topic that already exists is left as it is (and reported, with a note when
its partition count differs from the one refstream creates). Replication follows the cluster: factor
min(3, brokers), and `min.insync.replicas=2` once there are three replicas, so an
`acks=all` write survives the loss of any one broker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import click
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError

from refstream.settings import ENVIRONMENTS, Settings, SettingsError
from schemas.topics import DEFAULT_PARTITIONS, Topics, TopicSpec

_TOPIC_ALREADY_EXISTS = 36


class TopicsError(RuntimeError):
    """Topics could not be created; the message names the problem and the fix."""


@dataclass(frozen=True, slots=True)
class TopicResult:
    name: str
    status: str  # "created" | "exists"
    partitions: int
    replication_factor: int
    note: str = ""


def _unreachable(bootstrap: str) -> TopicsError:
    return TopicsError(
        f"Kafka at {bootstrap} is not reachable. Start a local broker with "
        "`refstream kafka up --detach`, or set REFSTREAM_KAFKA_BOOTSTRAP to your cluster."
    )


async def create_topics(
    bootstrap: str,
    envs: Sequence[str] = ENVIRONMENTS,
    *,
    prefix: str = "refstream",
    partitions: int = DEFAULT_PARTITIONS,
    replication_factor: int | None = None,
    timeout_s: float = 15.0,
) -> list[TopicResult]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    try:
        try:
            await asyncio.wait_for(admin.start(), timeout_s)
            cluster = await asyncio.wait_for(admin.describe_cluster(), timeout_s)
        except (KafkaConnectionError, TimeoutError, OSError):
            raise _unreachable(bootstrap) from None
        brokers = len(cluster.get("brokers", []))
        rf = replication_factor or min(3, max(brokers, 1))
        if rf > brokers:
            raise TopicsError(
                f"A replication factor of {rf} needs {rf} brokers, but the cluster at "
                f"{bootstrap} has {brokers}. Lower --replication-factor or add brokers."
            )
        specs: list[TopicSpec] = [s for env in envs for s in Topics(env=env, prefix=prefix).specs(partitions)]
        # all topics: a request naming topics would auto-create them on brokers with
        # auto.create.topics.enable, with default configs instead of ours
        names = {s.name for s in specs}
        existing = {t["topic"]: t for t in await admin.describe_topics()
                    if t.get("error_code", 0) == 0 and t["topic"] in names}
        wanted = [s for s in specs if s.name not in existing]
        created: dict[str, str] = {}
        if wanted:
            new = [
                NewTopic(
                    s.name,
                    s.partitions,
                    rf,
                    topic_configs={**s.config, "min.insync.replicas": "2" if rf >= 3 else "1"},
                )
                for s in wanted
            ]
            response = await admin.create_topics(new, timeout_ms=int(timeout_s * 1000))
            for name, code, *rest in response.topic_errors:
                if code == 0:
                    created[name] = "created"
                elif code == _TOPIC_ALREADY_EXISTS:  # another `topics create` raced us
                    created[name] = "exists"
                else:
                    message = rest[0] if rest and rest[0] else f"error code {code}"
                    raise TopicsError(f"Kafka refused to create topic {name!r}: {message}")
        if created:
            await _visible(admin, set(created), timeout_s)
        results = []
        for spec in specs:
            if spec.name in existing:
                info = existing[spec.name]
                have = len(info.get("partitions", []))
                replicas = len(info["partitions"][0]["replicas"]) if info.get("partitions") else 0
                note = ""
                if have != spec.partitions:
                    note = (f"has {have} partitions, refstream creates {spec.partitions}; left as it is "
                            "(changing partitions would move customers between partitions)")
                results.append(TopicResult(spec.name, "exists", have, replicas, note))
            else:
                results.append(TopicResult(spec.name, created.get(spec.name, "created"), spec.partitions, rf))
        return results
    except KafkaError as exc:
        raise TopicsError(f"Kafka at {bootstrap} answered with an error: {exc!r}") from None
    finally:
        await admin.close()


async def _visible(admin: AIOKafkaAdminClient, names: set[str], timeout_s: float) -> None:
    """Return once every new topic is in the metadata with a leader for each partition, so
    a producer started right after `topics create` finds them."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        ready = {
            t["topic"] for t in await admin.describe_topics()
            if t["topic"] in names and t.get("partitions")
            and all(p.get("leader", -1) >= 0 for p in t["partitions"])
        }
        if ready == names:
            return
        if asyncio.get_running_loop().time() > deadline:
            missing = ", ".join(sorted(names - ready))
            raise TopicsError(f"Kafka accepted the topics but {missing} had no leader within "
                              f"{timeout_s:g} s. Check the brokers' logs.")
        await asyncio.sleep(0.1)


@click.group(name="topics")
def topics() -> None:
    """The Kafka topics refstream reads and writes."""


@topics.command(name="create")
@click.option("--env", "envs", multiple=True, type=click.Choice(ENVIRONMENTS),
              help="Only this environment (repeatable) [default: sandbox and production].")
@click.option("--partitions", default=DEFAULT_PARTITIONS, show_default=True, type=click.IntRange(1, 1000),
              help="Partitions of the keyed topics (stripe-events, outputs).")
@click.option("--replication-factor", type=click.IntRange(1, 5), default=None,
              help="[default: min(3, number of brokers)]")
@click.option("--prefix", default="refstream", show_default=True, hidden=True,
              help="Topic name prefix (tests use a private one).")
def create(envs: tuple[str, ...], partitions: int, replication_factor: int | None, prefix: str) -> None:
    """Create the topics; existing ones are left alone, so running it twice is harmless.

    Names, partitions and retention: docs/design.md#topics-and-keys.
    """
    # aiokafka logs each failed connection attempt; the one error below says it all
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        results = asyncio.run(
            create_topics(settings.kafka_bootstrap, envs or ENVIRONMENTS, prefix=prefix,
                          partitions=partitions, replication_factor=replication_factor)
        )
    except TopicsError as exc:
        raise click.ClickException(str(exc)) from exc
    for r in results:
        line = f"{r.status:8} {r.name}  partitions={r.partitions} replication={r.replication_factor}"
        click.echo(line + (f"  note: {r.note}" if r.note else ""))
