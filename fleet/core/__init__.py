"""Fleet's sans-I/O domain: statuses, the child and batch state machines, events and effects,
output bookkeeping, and request validation.

Nothing here performs I/O, reads a clock or draws random numbers: time comes in as ``now``
and decisions come out as values (h11's "bring your own I/O").
"""

from __future__ import annotations

from ._accounts import AUDIT_ACTIONS as AUDIT_ACTIONS
from ._accounts import MAX_PASSWORD as MAX_PASSWORD
from ._accounts import MIN_PASSWORD as MIN_PASSWORD
from ._accounts import Role as Role
from ._accounts import parse_timestamp as parse_timestamp
from ._accounts import validate_login_body as validate_login_body
from ._accounts import validate_token_body as validate_token_body
from ._accounts import validate_user_body as validate_user_body
from ._batch import BATCH_TRANSITIONS as BATCH_TRANSITIONS
from ._batch import Batch as Batch
from ._batch import final_status as final_status
from ._deadlines import BatchTimers as BatchTimers
from ._errors import Conflict as Conflict
from ._errors import FleetError as FleetError
from ._errors import InvalidTransition as InvalidTransition
from ._errors import NotFound as NotFound
from ._errors import ValidationError as ValidationError
from ._events import Acked as Acked
from ._events import AgentAway as AgentAway
from ._events import AgentBack as AgentBack
from ._events import AgentLost as AgentLost
from ._events import AgentReturned as AgentReturned
from ._events import BatchChanged as BatchChanged
from ._events import ChildChanged as ChildChanged
from ._events import ChildEvent as ChildEvent
from ._events import Dispatched as Dispatched
from ._events import Effect as Effect
from ._events import Event as Event
from ._events import Finished as Finished
from ._events import OutputSeen as OutputSeen
from ._events import Reconciled as Reconciled
from ._events import Rejected as Rejected
from ._events import SendCommand as SendCommand
from ._events import SendTerminate as SendTerminate
from ._events import Skipped as Skipped
from ._events import Started as Started
from ._events import TerminateBatch as TerminateBatch
from ._events import TerminateChild as TerminateChild
from ._events import Tick as Tick
from ._events import Unreachable as Unreachable
from ._output import STREAMS as STREAMS
from ._output import Accepted as Accepted
from ._output import OutputSummary as OutputSummary
from ._output import StreamCursor as StreamCursor
from ._params import ENV_PREFIX as ENV_PREFIX
from ._params import MASK as MASK
from ._params import MAX_PARAM_PATTERN as MAX_PARAM_PATTERN
from ._params import MAX_PARAMETERS as MAX_PARAMETERS
from ._params import MAX_VALUE_BYTES as MAX_VALUE_BYTES
from ._params import PARAM_NAME_PATTERN as PARAM_NAME_PATTERN
from ._params import ParamSpec as ParamSpec
from ._params import check_parameters as check_parameters
from ._params import mask_parameters as mask_parameters
from ._params import param_environment as param_environment
from ._params import validate_declarations as validate_declarations
from ._params import validate_values as validate_values
from ._request import ID_PATTERN as ID_PATTERN
from ._request import MAX_ALIAS as MAX_ALIAS
from ._request import MAX_COMMAND_BYTES as MAX_COMMAND_BYTES
from ._request import MAX_DESCRIPTION as MAX_DESCRIPTION
from ._request import MAX_ID_DIGITS as MAX_ID_DIGITS
from ._request import MAX_NAME as MAX_NAME
from ._request import MAX_PATH as MAX_PATH
from ._request import MAX_TAG as MAX_TAG
from ._request import MAX_TAGS as MAX_TAGS
from ._request import MAX_TARGETS as MAX_TARGETS
from ._request import MAX_TIMEOUT_S as MAX_TIMEOUT_S
from ._request import NAME_PATTERN as NAME_PATTERN
from ._request import TAG_NONBLANK_PATTERN as TAG_NONBLANK_PATTERN
from ._request import TAG_PATTERN as TAG_PATTERN
from ._request import TEXT_PATTERN as TEXT_PATTERN
from ._request import BatchRequest as BatchRequest
from ._request import check_references as check_references
from ._request import parse_id as parse_id
from ._request import validate_batch_request as validate_batch_request
from ._request import validate_script_body as validate_script_body
from ._request import validate_vps_body as validate_vps_body
from ._rollout import CONCURRENCY_PERCENT_PATTERN as CONCURRENCY_PERCENT_PATTERN
from ._rollout import ERROR_STATUSES as ERROR_STATUSES
from ._rollout import ERRORS_PERCENT_PATTERN as ERRORS_PERCENT_PATTERN
from ._rollout import MAX_LIMIT as MAX_LIMIT
from ._rollout import MAX_WAIT_FOR_AGENT_S as MAX_WAIT_FOR_AGENT_S
from ._rollout import Rollout as Rollout
from ._rollout import parse_limit as parse_limit
from ._rollout import resolve_limit as resolve_limit
from ._status import BatchStatus as BatchStatus
from ._status import ChildStatus as ChildStatus
from ._task import CHILD_TRANSITIONS as CHILD_TRANSITIONS
from ._task import AgentReport as AgentReport
from ._task import ChildTask as ChildTask

__all__ = [
    "AUDIT_ACTIONS",
    "BATCH_TRANSITIONS",
    "CHILD_TRANSITIONS",
    "CONCURRENCY_PERCENT_PATTERN",
    "ENV_PREFIX",
    "ERRORS_PERCENT_PATTERN",
    "ERROR_STATUSES",
    "ID_PATTERN",
    "MASK",
    "MAX_ALIAS",
    "MAX_COMMAND_BYTES",
    "MAX_DESCRIPTION",
    "MAX_ID_DIGITS",
    "MAX_LIMIT",
    "MAX_NAME",
    "MAX_PARAMETERS",
    "MAX_PARAM_PATTERN",
    "MAX_PASSWORD",
    "MAX_PATH",
    "MAX_TAG",
    "MAX_TAGS",
    "MAX_TARGETS",
    "MAX_TIMEOUT_S",
    "MAX_VALUE_BYTES",
    "MAX_WAIT_FOR_AGENT_S",
    "MIN_PASSWORD",
    "NAME_PATTERN",
    "PARAM_NAME_PATTERN",
    "STREAMS",
    "TAG_NONBLANK_PATTERN",
    "TAG_PATTERN",
    "TEXT_PATTERN",
    "Accepted",
    "Acked",
    "AgentAway",
    "AgentBack",
    "AgentLost",
    "AgentReport",
    "AgentReturned",
    "Batch",
    "BatchChanged",
    "BatchRequest",
    "BatchStatus",
    "BatchTimers",
    "ChildChanged",
    "ChildEvent",
    "ChildStatus",
    "ChildTask",
    "Conflict",
    "Dispatched",
    "Effect",
    "Event",
    "Finished",
    "FleetError",
    "InvalidTransition",
    "NotFound",
    "OutputSeen",
    "OutputSummary",
    "ParamSpec",
    "Reconciled",
    "Rejected",
    "Role",
    "Rollout",
    "SendCommand",
    "SendTerminate",
    "Skipped",
    "Started",
    "StreamCursor",
    "TerminateBatch",
    "TerminateChild",
    "Tick",
    "Unreachable",
    "ValidationError",
    "check_parameters",
    "check_references",
    "final_status",
    "mask_parameters",
    "param_environment",
    "parse_id",
    "parse_limit",
    "parse_timestamp",
    "resolve_limit",
    "validate_batch_request",
    "validate_declarations",
    "validate_login_body",
    "validate_script_body",
    "validate_token_body",
    "validate_user_body",
    "validate_values",
    "validate_vps_body",
]
