"""Ingest puts each customer's events on the partition every Kafka client would choose."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner

from ingest.producer import KeyPartitioner


def test_remembered_partitions_equal_the_java_clients_murmur2_choice() -> None:
    default, remembered = DefaultPartitioner(), KeyPartitioner()
    keys = [f"cus_{i:05d}".encode() for i in range(2000)] + [b"in_1", b"evt_x", "cus_é".encode()]
    for partitions in (list(range(8)), list(range(8)), list(range(12))):  # again, then more partitions
        for key in keys:
            assert remembered(key, partitions, partitions) == default(key, partitions, partitions)


def test_remembering_is_bounded() -> None:
    remembered = KeyPartitioner()
    partitions = list(range(8))
    for i in range(KeyPartitioner.MAX_KEYS + 10):
        remembered(f"cus_{i}".encode(), partitions, partitions)
    assert len(remembered._index) <= KeyPartitioner.MAX_KEYS
