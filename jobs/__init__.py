"""The job domain shared by the API and the workers: spec, states, schema, repository, settings.

- `jobs.spec`: `JobSpec` and `validate_spec` (every limit, errors naming the field);
- `jobs.states`: ``queued -> running -> succeeded | failed | cancelled`` and `check_transition`;
- `jobs.models`: the SQLAlchemy tables; `jobs.db`: engines and sessions;
- `jobs.repository`: every read and write (add and flush; the caller commits);
- `jobs.settings`: `Settings` from ``REVTUNE_*`` variables, `get_settings`;
- `jobs.templates`: the paper's experiments as ready specs.

It imports no web framework, no task queue and no engine.
"""
