"""Creating a batch: from a ``POST /api/batch_commands`` body, or as a re-run of another batch.

Both end in ``launch``: one store transaction, then the supervisor runs it. Secret parameter
values go to the supervisor (memory) only: the stored request, the record, the views and the
log line see them as ``"***"``.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from fleet import core
from fleet.server.store import BatchOptions, BatchRecord, Store

from . import policy
from .auth import audit_note
from .common import Services
from .policy import Principal

__all__ = ["RERUN_ONLY", "create_from_body", "rerun"]

logger = logging.getLogger(__name__)

#: ``POST /api/batch_commands/{id}/rerun`` ``only`` values.
RERUN_ONLY = ("not_succeeded", "all")


@dataclasses.dataclass(frozen=True)
class Launch:
    """Everything a new batch needs, checked."""

    payload: dict[str, Any]
    targets: Sequence[tuple[int, str]]  # (vps_id, vps_name)
    command_type: str
    command_content: str
    script_id: int | None
    working_directory: str | None
    execution_alias: str | None
    timeout_seconds: int
    options: BatchOptions
    secrets: Mapping[str, str]


#: The command text kept in a ``batch.create`` audit entry (the batch itself keeps all of it).
_AUDIT_COMMAND = 4096


def _audit_details(new: Launch, batch_id: str) -> dict[str, Any]:
    """What ``batch.create`` / ``batch.rerun`` record: the command and its targets, the rollout
    options and the parameter *names* (never a value: secret ones are never written)."""
    options = new.options
    details: dict[str, Any] = {
        "target_vps_ids": [vps_id for vps_id, _ in new.targets],
        "working_directory": new.working_directory,
        "execution_alias": new.execution_alias,
        "timeout_seconds": new.timeout_seconds,
        "max_concurrency": options.max_concurrency,
        "max_errors": options.max_errors,
        "wait_for_agent_seconds": options.wait_for_agent_seconds,
        "target_tags": list(options.target_tags or ()),
        "parameter_names": sorted(options.parameters or {}),
        "rerun_of": options.rerun_of,
    }
    if new.script_id is not None:
        details["script_id"] = new.script_id
    else:
        cut = len(new.command_content) > _AUDIT_COMMAND
        details["command"] = new.command_content[:_AUDIT_COMMAND] + ("…" if cut else "")
    return {k: v for k, v in details.items() if v not in (None, [], "")}


async def launch(services: Services, new: Launch, principal: Principal) -> BatchRecord:
    """Store the batch (created by ``principal``, audited in the same transaction) and run it."""
    batch_id = str(uuid.uuid4())
    targets = [(str(uuid.uuid4()), vps_id, name) for vps_id, name in new.targets]
    action = "batch.rerun" if new.options.rerun_of else "batch.create"
    note = audit_note(
        action, target_type="batch", target_id=batch_id, details=_audit_details(new, batch_id)
    )
    record = await services.db.run(
        Store.create_batch,
        batch_id=batch_id,
        payload=new.payload,
        execution_alias=new.execution_alias,
        user_id=principal.username,
        command_type=new.command_type,
        command_content=new.command_content,
        script_id=new.script_id,
        working_directory=new.working_directory,
        timeout_seconds=new.timeout_seconds,
        targets=targets,
        log_dir=services.config.data_dir / "logs",
        now=datetime.now(UTC),
        options=new.options,
        owner_node=None if services.cluster is None else services.cluster.name,
        audit=note,
    )
    services.supervisor.submit(record, secrets=new.secrets)
    logger.info(
        "batch=%s created for %s targets%s",
        batch_id,
        len(targets),
        f" (re-run of {new.options.rerun_of})" if new.options.rerun_of else "",
    )
    return record


async def create_from_body(services: Services, body: Any, principal: Principal) -> BatchRecord:
    """``POST /api/batch_commands``: validate everything (every problem named), then launch.

    Raises:
        core.ValidationError: the body, a reference, a target tag or a parameter is wrong.
        ApiError: 403, a target (named or by tag) is outside the caller's allowed tags.
    """
    db = services.db
    req = core.validate_batch_request(body)
    known = await db.run(Store.get_vps_many, req.target_vps_ids)
    script = None
    if req.script_id is not None:
        try:
            script = await db.run(Store.get_script, req.script_id)
        except core.NotFound:
            script = None
    core.check_references(req, known_vps_ids=known, script_exists=script is not None)
    targets = {v: known[v].name for v in req.target_vps_ids}
    records = dict(known)
    if req.target_tags:
        tagged = await db.run(Store.vps_with_tags, req.target_tags)
        records.update(tagged)
        if not tagged and not targets:
            raise core.ValidationError(
                [{"field": "target_tags", "reason": "no VPS has any of these tags"}]
            )
        for vps_id in sorted(tagged):
            targets.setdefault(vps_id, tagged[vps_id].name)
    if len(targets) > core.MAX_TARGETS:
        raise core.ValidationError(
            [{"field": "target_tags", "reason": f"at most {core.MAX_TARGETS} targets per batch"}]
        )
    policy.check_targets(principal, targets, records)
    declared = None
    if script is not None:
        declared = tuple(core.ParamSpec(**p) for p in script.parameters)
    values, secret = core.check_parameters(req.parameters, declared)
    assert isinstance(body, Mapping)
    payload = dict(body)
    if "parameters" in payload:
        payload["parameters"] = core.mask_parameters(req.parameters, secret)
    return await launch(
        services,
        Launch(
            payload=payload,
            targets=list(targets.items()),
            command_type="SAVED_SCRIPT" if script is not None else "ADHOC_COMMAND",
            command_content=script.content if script is not None else req.command_content or "",
            script_id=req.script_id,
            working_directory=req.working_directory,
            execution_alias=req.execution_alias,
            timeout_seconds=req.timeout_seconds,
            options=BatchOptions(
                max_concurrency=req.max_concurrency,
                max_errors=req.max_errors,
                wait_for_agent_seconds=req.wait_for_agent_seconds,
                target_tags=req.target_tags,
                parameters=core.mask_parameters(values, secret),
                secret_parameters=tuple(sorted(secret)),
            ),
            secrets={name: values[name] for name in secret},
        ),
        principal,
    )


def _rerun_body(body: Any) -> tuple[str, dict[str, str]]:
    if body is None:
        body = {}
    if not isinstance(body, Mapping):
        raise core.ValidationError([{"field": "body", "reason": "must be a JSON object"}])
    errors: list[dict[str, Any]] = []
    for name in sorted(set(body) - {"only", "parameters"}, key=str):
        errors.append({"field": str(name), "reason": "unknown field"})
    only = body.get("only", "not_succeeded")
    if only is None:
        only = "not_succeeded"
    if only not in RERUN_ONLY:
        errors.append({"field": "only", "reason": 'must be "not_succeeded" or "all"'})
    values = core.validate_values(body.get("parameters"), errors)
    if errors:
        raise core.ValidationError(errors)
    return str(only), values


async def rerun(
    services: Services, original: BatchRecord, body: Any, principal: Principal
) -> BatchRecord:
    """``POST /api/batch_commands/{id}/rerun``: the same command, options and parameters on the
    selected children's VPSes. Secret parameters must be given again (they were not kept).

    Raises:
        core.ValidationError: a bad body, nothing selected, or secret values missing.
    """
    only, given = _rerun_body(body)
    chosen: dict[int, str] = {}
    for child in original.children:
        if only == "all" or child.status is not core.ChildStatus.SUCCESS:
            chosen.setdefault(child.vps_id, child.vps_name)
    if not chosen:
        raise core.ValidationError(
            [{"field": "only", "reason": "nothing to re-run: every child succeeded"}]
        )
    existing = await services.db.run(Store.get_vps_many, list(chosen))
    targets = [(vps_id, existing[vps_id].name) for vps_id in chosen if vps_id in existing]
    policy.check_targets(principal, [vps_id for vps_id, _ in targets], existing)
    if not targets:
        raise core.ValidationError(
            [{"field": "only", "reason": "nothing to re-run: those VPSes were deleted"}]
        )
    secret = frozenset(original.secret_parameters)
    errors = [
        {"field": f"parameters.{name}", "reason": "only secret parameters are given to a re-run"}
        for name in sorted(set(given) - secret)
    ]
    errors += [
        {
            "field": f"parameters.{name}",
            "reason": "secret parameter: give its value again (secrets are not kept)",
        }
        for name in sorted(secret - set(given))
    ]
    if errors:
        raise core.ValidationError(errors)
    plain = {k: v for k, v in original.parameters.items() if k not in secret}
    payload = {
        "rerun_of": original.id,
        "only": only,
        "target_vps_ids": [vps_id for vps_id, _ in targets],
        "parameters": core.mask_parameters(plain | given, secret),
    }
    return await launch(
        services,
        Launch(
            payload=payload,
            targets=targets,
            command_type=original.command_type,
            command_content=original.command_content,
            script_id=original.script_id,
            working_directory=original.working_directory,
            execution_alias=original.execution_alias,
            timeout_seconds=original.timeout_seconds,
            options=BatchOptions(
                max_concurrency=original.max_concurrency,
                max_errors=original.max_errors,
                wait_for_agent_seconds=original.wait_for_agent_seconds,
                rerun_of=original.id,
                parameters=dict(original.parameters),
                secret_parameters=original.secret_parameters,
            ),
            secrets=given,
        ),
        principal,
    )
