"""The steps table holds exactly the step record of `hypercore.steps`, with matching types."""

from __future__ import annotations

from sqlalchemy import Boolean, Float, Integer

from hypercore.steps import STEP_FIELDS, STEP_TYPES
from jobs.models import Step

_COLUMN_TYPES = {int: Integer, float: Float, bool: Boolean}


def test_the_steps_table_has_one_column_per_step_field_in_order():
    columns = [c.name for c in Step.__table__.columns]
    assert columns == ["job_id", *STEP_FIELDS, "created_at"]


def test_each_step_column_has_its_field_s_type_and_only_meta_iter_is_required():
    for field, kind in STEP_TYPES.items():
        column = Step.__table__.columns[field]
        assert isinstance(column.type, _COLUMN_TYPES[kind]), field
        assert column.nullable == (field != "meta_iter"), field
