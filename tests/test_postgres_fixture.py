"""The PostgreSQL of the tests (tests/pg.py) is real, and it gives the review queue its claim with no
double assignment: ``SELECT ... FOR UPDATE SKIP LOCKED`` hands a row locked by one transaction to no other."""

from __future__ import annotations

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, insert, select, update
from sqlalchemy.exc import OperationalError


def test_skip_locked_hands_each_row_to_one_transaction(postgres_url: str) -> None:
    # lock_timeout: a broken lock turns into a failure, not a hung suite.
    engine = create_engine(postgres_url, connect_args={"options": "-c lock_timeout=5s"})
    metadata = MetaData()
    items = Table(
        "claim_probe",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("clip", String, nullable=False),
        Column("claimed_by", String),
    )
    claim = (
        select(items.c.id)
        .where(items.c.claimed_by.is_(None))
        .order_by(items.c.id)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    try:
        assert engine.dialect.name == "postgresql"
        metadata.create_all(engine)
        with engine.begin() as one, engine.begin() as other:
            one.execute(insert(items), [{"id": 1, "clip": "a.wav"}, {"id": 2, "clip": "b.wav"}])
            other.execute(insert(items), [{"id": 3, "clip": "c.wav"}])

        with engine.connect() as alice, engine.connect() as bob, engine.connect() as carol:
            with alice.begin():
                first = alice.execute(claim).scalar_one()
                # Row 1 is locked by alice's open transaction: without SKIP LOCKED one cannot take it.
                with pytest.raises(OperationalError, match="could not obtain lock"), carol.begin():
                    carol.execute(select(items.c.id).where(items.c.id == first).with_for_update(nowait=True))
                with bob.begin():
                    second = bob.execute(claim).scalar_one()
                    bob.execute(update(items).where(items.c.id == second).values(claimed_by="bob"))
                alice.execute(update(items).where(items.c.id == first).values(claimed_by="alice"))
            assert (first, second) == (1, 2)

        with engine.connect() as conn:
            rows = conn.execute(select(items.c.id, items.c.clip, items.c.claimed_by).order_by(items.c.id)).all()
        assert [tuple(row) for row in rows] == [(1, "a.wav", "alice"), (2, "b.wav", "bob"), (3, "c.wav", None)]
    finally:
        metadata.drop_all(engine)
        engine.dispose()
