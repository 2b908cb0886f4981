"""The faust.App factory: one app (and consumer group) per environment.

Everything the app needs is injected through `WorkerConfig`, so tests and benchmarks run
it under a private topic prefix, app id and data dir. The agents live in
`processors/agents.py`; this module only builds and configures the app.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
from mode import CrashingSupervisor
from mode.utils.objects import cached_property
from mode.utils.queues import FlowControlEvent

from processors import handoff
from processors.windows import FETCH_MAX_WAIT_MS, FETCH_MIN_BYTES
from refstream.settings import Settings
from schemas.rules import RuleBook, Rules, load_rules
from schemas.topics import DEFAULT_PARTITIONS, Topics

DEFAULT_RULES = Path(__file__).resolve().parent.parent / "examples" / "rules.toml"


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    settings: Settings
    rules: Rules
    topics: Topics
    partitions: int = DEFAULT_PARTITIONS
    web_port: int = 6066
    web_host: str = "127.0.0.1"
    web_token: str | None = None  # bearer token for the web API; None = open (127.0.0.1 only)
    # the first rules revision in the control log (refstream/control_log.py); None: `rules`
    # alone, as a test or benchmark configures it
    first: RuleBook | None = None

    @property
    def book(self) -> RuleBook:
        """The rules the stages start from, with the identity key (REFSTREAM_IDENTITY_KEY)."""
        book = self.first if self.first is not None else RuleBook.of(self.rules)
        return book.keyed(self.settings.identity_key)

    @property
    def app_id(self) -> str:
        # `refstream-sandbox` in operation; a test prefix gives a private consumer group
        return f"{self.topics.prefix}-{self.topics.env}"

    @property
    def data_dir(self) -> Path:
        # per app id: RocksDB files are named by table and partition only, so sandbox and
        # production (or two test prefixes) must not share a folder
        return self.settings.data_dir / "worker" / self.app_id

    def internal(self, name: str) -> str:
        """Internal topic names live next to the environment's topics."""
        return f"{self.topics.prefix}.worker-{name}.{self.topics.env}"


def config_from_env(
    *, web_port: int = 6066, topic_prefix: str = "refstream", partitions: int = DEFAULT_PARTITIONS,
) -> WorkerConfig:
    """Settings from the environment (docs/cli.md#configuration), rules from REFSTREAM_RULES."""
    settings = Settings.from_env()
    rules = load_rules(settings.rules_path or DEFAULT_RULES)
    token = os.environ.get("REFSTREAM_WEB_TOKEN", "").strip() or None
    return WorkerConfig(
        settings=settings,
        rules=rules,
        topics=Topics(env=settings.env, prefix=topic_prefix),
        partitions=partitions,
        web_port=web_port,
        web_token=token,
    )


class StreamFlow(FlowControlEvent):
    """Faust's flow control of the stream queues, minus one way of losing records.

    `resume()` clears every stream queue, also when the queues are flowing already. That
    is what faust 0.15.3 does at the end of each recovery after a rebalance: it resumes the
    stream partitions, seeks them to their committed offsets (round trips to the broker),
    then calls `resume()`. A record fetched in between sits in a queue with its offset
    already counted as read: the clear drops it, it is never fetched again, and faust
    commits past it as soon as the next record of the partition is acked (its gap check
    starts one offset late). Webhooks arriving while a worker joins or leaves were lost
    that way (tests/pipeline/test_two_workers.py). A resume of flowing queues now keeps
    them; a resume after a suspend still clears what was queued before the rebalance.
    """

    def resume(self) -> None:
        if self.is_active():
            return
        super().resume()


# Table writes wait in faust's producer buffer until its task hands them to aiokafka, one
# per turn of the event loop. Past 100 (faust's limit) the consumer stops handing records
# to every stream until 100 more are sent: a batch that wrote 150 referrer values stalled
# the customer stage too. The agents already bound what they write (one batch,
# after its acks), so the limit only has to stay out of the way.
PRODUCER_BUFFER_MAX = 20_000


class WorkerApp(faust.App):
    @cached_property
    def flow_control(self) -> FlowControlEvent:
        return StreamFlow(loop=self.loop)

    def _new_consumer(self) -> faust.types.ConsumerT:
        consumer = super()._new_consumer()
        handoff.install(consumer)
        handoff.install_rewind(consumer)
        handoff.install_commit_guard(consumer)
        thread = consumer._thread  # type: ignore[attr-defined]
        create_worker_consumer = thread._create_worker_consumer

        def with_our_fetch_waits(transport: Any) -> Any:
            kafka_consumer = create_worker_consumer(transport)
            # both read by its fetcher when it starts
            kafka_consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
            kafka_consumer._fetch_min_bytes = FETCH_MIN_BYTES
            return kafka_consumer

        thread._create_worker_consumer = with_our_fetch_waits
        return consumer

    def _new_producer(self) -> faust.types.ProducerT:
        producer = super()._new_producer()
        producer.buffer.max_messages = PRODUCER_BUFFER_MAX  # type: ignore[attr-defined]
        return producer


def create_app(cfg: WorkerConfig) -> faust.App:
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    return WorkerApp(
        cfg.app_id,
        broker=f"kafka://{cfg.settings.kafka_bootstrap.split(',')[0]}",
        store="rocksdb://",
        datadir=str(cfg.data_dir),
        # At-least-once plus the watermarks of processors/delivery.py and the
        # transactional publisher: see docs/pipeline.md for why not "exactly_once".
        processing_guarantee="at_least_once",
        topic_partitions=cfg.partitions,
        topic_allow_declare=True,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        # one replica of each table is enough on a dev box; a restarted or new worker
        # restores from the changelog
        table_standby_replicas=0,
        # a dead worker's partitions move on after 10 s instead of faust's 60 s default
        broker_session_timeout=10.0,
        broker_heartbeat_interval=1.0,
        # a batch's sends (and table changelog records) leave in a few large requests
        # instead of many 16 KiB ones: the broker's CPU per event is as large as ours
        producer_max_batch_size=512 * 1024,  # under the broker's 1 MiB message.max.bytes
        producer_linger=0.005,
        broker_commit_every=1000,
        broker_commit_interval=1.0,
        # a rebalance waits for the batch in flight (sends acknowledged, table written):
        # a late table write for a partition another worker already took over could
        # otherwise land in its changelog after the new owner's
        stream_wait_empty=True,
        # an agent that crashes takes the worker down with it (and its partitions move to
        # the other workers), instead of leaving a worker that holds partitions and does
        # nothing with them
        agent_supervisor=CrashingSupervisor,
        web_enabled=True,
        # faust's /table pages serve table values to anyone, around the bearer token
        # (tests/faults/test_worker_security.py); /router stays: table_route needs it
        web_tables_enabled=False,
        web_stats_enabled=False,
        web_graph_enabled=False,
        web_bind=cfg.web_host,
        web_host=cfg.web_host,
        web_port=cfg.web_port,
        canonical_url=f"http://{cfg.web_host}:{cfg.web_port}",
        web_in_thread=False,
    )


INTERNAL_TOPICS = ("customer", "invoice", "referrer", "outbox")
TABLES = ("referrals", "invoice-links", "referrers")
# Records between stages only need to outlive a worker outage; a week is generous.
INTERNAL_CONFIG = {"retention.ms": str(7 * 24 * 3600 * 1000), "cleanup.policy": "delete"}


def changelog(cfg: WorkerConfig, table: str) -> str:
    return f"{cfg.app_id}-{table}-changelog"


async def ensure_internal_topics(cfg: WorkerConfig) -> None:
    """Create the stage-to-stage topics, co-partitioned with stripe-events (idempotent)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(bootstrap_servers=cfg.settings.kafka_bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        brokers = len((await admin.describe_cluster()).get("brokers", [])) or 1
        rf = min(3, brokers)
        wanted = [
            NewTopic(cfg.internal(name), cfg.partitions, rf, topic_configs=dict(INTERNAL_CONFIG))
            for name in INTERNAL_TOPICS
            if cfg.internal(name) not in existing
        ] + [
            # the tables' changelogs, created here (not lazily by Faust) so their metadata is
            # known before the first record arrives: Faust refuses a table whose changelog
            # it cannot see yet
            NewTopic(changelog(cfg, table), cfg.partitions, rf, topic_configs={"cleanup.policy": "compact"})
            for table in TABLES
            if changelog(cfg, table) not in existing
        ]
        if wanted:
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker was quicker
                await admin.create_topics(wanted)
    finally:
        await admin.close()
