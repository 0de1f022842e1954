"""Every read and write of the job domain, as functions taking a `Session`.

They add and flush, never commit: the caller owns the transaction (an API route, one worker
callback), so one call of the public API is one unit of work and enqueueing happens after the
commit. Reads a tenant makes are tenant-scoped: another tenant's job or dataset raises `NotFound`,
exactly like one that does not exist.

One submodule per resource, every public name re-exported here (callers write
``from jobs import repository`` and ``repository.create_job``):

- `jobs.repository.keys`: tenants, API keys and `authenticate` (``LOCAL_TENANT``, ``KEY_PREFIX``);
- `jobs.repository.jobs`: create, get, list (by cursor), cancel, continue and delete jobs;
- `jobs.repository.results`: a job's steps and hyperparameter snapshots;
- `jobs.repository.datasets`: uploaded datasets;
- `jobs.repository.plugins`: the model plugins the workers advertise;
- `jobs.repository.external`: library runs the service records (origin ``external``): a recorder's
  steps, heartbeats, resume and finish;
- `jobs.repository.worker`: the worker's protocol (claim, heartbeat, record, warn, finish) and the
  reaper's queries (``DEFAULT_HEARTBEAT_TIMEOUT_S``); its docstring describes the protocol.

Private state lives in its submodule and is not re-exported: a test that swaps the argon2 hasher
patches `jobs.repository.keys`, where `authenticate` looks it up.
"""

from __future__ import annotations

from hypercore.steps import STEP_FIELDS  # the step vocabulary the rows follow (as before the split)
from jobs.repository.datasets import create_dataset, dataset_shape, delete_dataset, get_dataset, list_datasets
from jobs.repository.external import (
    NotRecorded,
    Recorded,
    finish_recording,
    record_step,
    recording_heartbeat,
    resume_recording,
)
from jobs.repository.jobs import (
    JobPage,
    continue_job,
    create_job,
    delete_job,
    get_job,
    list_jobs,
    request_cancel,
)
from jobs.repository.keys import (
    KEY_PREFIX,
    LOCAL_TENANT,
    ApiKeyInfo,
    authenticate,
    create_api_key,
    get_or_create_tenant,
    list_api_keys,
    parse_api_key,
    revoke_api_key,
)
from jobs.repository.plugins import (
    OfferedPlugin,
    advertise_plugins,
    offered_plugin,
    offered_plugins,
    refresh_plugins,
    withdraw_plugins,
)
from jobs.repository.results import (
    HyperparameterValue,
    StepPage,
    get_hyperparameter,
    list_hyperparameters,
    list_steps,
)
from jobs.repository.worker import (
    DEFAULT_HEARTBEAT_TIMEOUT_S,
    Claim,
    ClaimLost,
    StepTally,
    add_warning,
    claim_job,
    finish_job,
    heartbeat,
    record_meta_iteration,
    requeue,
    stale_jobs,
    tally_steps,
)

__all__ = [
    "DEFAULT_HEARTBEAT_TIMEOUT_S",
    "KEY_PREFIX",
    "LOCAL_TENANT",
    "STEP_FIELDS",
    "ApiKeyInfo",
    "Claim",
    "ClaimLost",
    "HyperparameterValue",
    "JobPage",
    "NotRecorded",
    "Recorded",
    "OfferedPlugin",
    "StepPage",
    "StepTally",
    "add_warning",
    "advertise_plugins",
    "authenticate",
    "claim_job",
    "create_api_key",
    "create_dataset",
    "continue_job",
    "create_job",
    "dataset_shape",
    "delete_dataset",
    "delete_job",
    "finish_job",
    "finish_recording",
    "get_dataset",
    "get_hyperparameter",
    "get_job",
    "get_or_create_tenant",
    "heartbeat",
    "list_api_keys",
    "list_datasets",
    "list_hyperparameters",
    "list_jobs",
    "list_steps",
    "offered_plugin",
    "offered_plugins",
    "parse_api_key",
    "record_meta_iteration",
    "record_step",
    "recording_heartbeat",
    "refresh_plugins",
    "request_cancel",
    "requeue",
    "resume_recording",
    "revoke_api_key",
    "stale_jobs",
    "tally_steps",
    "withdraw_plugins",
]
