"""Teams: users, their web sessions and personal API tokens, and the audit log.

Secrets never reach the store: passwords arrive as argon2id hashes, tokens and session ids as
SHA-256 digests. Every change takes an optional ``AuditNote`` written in its own transaction.
The rules that need the whole table (the last admin stays an admin) are checked here, inside
the transaction that would break them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pony import orm

from fleet.core import Conflict, NotFound, Role
from fleet.server.records import AuditNote, AuditRecord, TokenRecord, UserRecord

from .base import StoreBase, db_session
from .schema import aware, to_db, utcnow

__all__ = ["AccountStore"]

#: The built-in user the first-start admin token belongs to.
BUILTIN_ADMIN = "admin"


_BUILTIN_OWNER = "{} owns the first-start admin token, which keeps working: it stays an admin"
_BUILTIN_TOKEN = "the first-start admin token keeps working and cannot be revoked here"


def _conflict(field: str, reason: str) -> Conflict:
    return Conflict([{"field": field, "reason": reason}])


class AccountStore(StoreBase):
    """The store's team tables (``fleet_user``, ``web_session``, ``api_token``, ``audit_log``)."""

    # -- users -------------------------------------------------------------------------------

    @staticmethod
    def _user_record(u: Any) -> UserRecord:
        return UserRecord(
            id=u.id,
            username=u.username,
            role=Role(u.role),
            allowed_tags=tuple(u.allowed_tags or ()),
            has_password=bool(u.password_hash),
            created_at=u.created_at.replace(tzinfo=UTC),
            updated_at=u.updated_at.replace(tzinfo=UTC),
        )

    def _user(self, user_id: int) -> Any:
        user = self._e.User.get(id=user_id)
        if user is None:
            raise NotFound("user", user_id)
        return user

    def _owns_builtin_token(self, user_id: int) -> bool:
        return bool(self._e.ApiToken.select(lambda t: t.user_id == user_id and t.builtin).exists())

    def _other_admins(self, user_id: int) -> int:
        User = self._e.User
        admin = Role.ADMIN.value
        return int(orm.count(u for u in User if u.role == admin and u.id != user_id))

    @db_session
    def ensure_admin(self) -> UserRecord:
        """The built-in ``admin`` user, created when the store has no user; tokens without an
        owner (a store from before teams) are given to it."""
        User = self._e.User
        user = User.get(username=BUILTIN_ADMIN)
        if user is None:
            if User.select().exists():
                admins = User.select(lambda u: u.role == Role.ADMIN.value).order_by(User.id)
                user = admins.first()
            if user is None:
                now = utcnow()
                user = User(
                    username=BUILTIN_ADMIN,
                    password_hash=None,
                    role=Role.ADMIN.value,
                    allowed_tags=[],
                    created_at=now,
                    updated_at=now,
                )
                orm.flush()
        for token in self._e.ApiToken.select(lambda t: t.user_id is None):
            token.user_id = user.id  # a store from before teams: its tokens were the admin's
            token.builtin = True
        return self._user_record(user)

    @db_session
    def create_user(
        self,
        username: str,
        password_hash: str,
        role: Role,
        allowed_tags: Sequence[str],
        *,
        audit: AuditNote | None = None,
    ) -> UserRecord:
        """Raises Conflict if the username is taken."""
        if self._e.User.get(username=username) is not None:
            raise _conflict("username", f"a user named {username} already exists")
        now = utcnow()
        user = self._e.User(
            username=username,
            password_hash=password_hash,
            role=role.value,
            allowed_tags=list(allowed_tags),
            created_at=now,
            updated_at=now,
        )
        orm.flush()
        self._audit(audit, user.id)
        return self._user_record(user)

    @db_session
    def list_users(self) -> list[UserRecord]:
        User = self._e.User
        return [self._user_record(u) for u in User.select().order_by(User.id)]

    @db_session
    def get_user(self, user_id: int) -> UserRecord:
        return self._user_record(self._user(user_id))

    @db_session
    def update_user(
        self,
        user_id: int,
        *,
        username: str | None = None,
        password_hash: str | None = None,
        role: Role | None = None,
        allowed_tags: Sequence[str] | None = None,
        audit: AuditNote | None = None,
    ) -> UserRecord:
        """Change what is given. A password change ends the user's web sessions.

        Raises:
            NotFound: no such user.
            Conflict: the username is taken, or this would leave no admin.
        """
        user = self._user(user_id)
        if username is not None and username != user.username:
            if self._e.User.get(username=username) is not None:
                raise _conflict("username", f"a user named {username} already exists")
            user.username = username
        if role is not None and role is not Role.ADMIN and user.role == Role.ADMIN.value:
            if self._owns_builtin_token(user_id):
                raise _conflict("role", _BUILTIN_OWNER.format(user.username))
            if not self._other_admins(user_id):
                raise _conflict(
                    "role", f"{user.username} is the last admin: make another admin first"
                )
        if role is not None:
            user.role = role.value
        if Role(user.role) is Role.ADMIN and allowed_tags:
            raise _conflict("allowed_tags", "an admin sees every VPS: leave it empty")
        if allowed_tags is not None:
            user.allowed_tags = list(allowed_tags)
        if password_hash is not None:
            user.password_hash = password_hash
            orm.delete(s for s in self._e.WebSession if s.user_id == user_id)
        user.updated_at = utcnow()
        self._audit(audit)
        return self._user_record(user)

    @db_session
    def delete_user(self, user_id: int, *, audit: AuditNote | None = None) -> None:
        """Delete a user with their sessions and tokens. Raises Conflict for the last admin."""
        user = self._user(user_id)
        if self._owns_builtin_token(user_id):
            raise _conflict("id", _BUILTIN_OWNER.format(user.username))
        if user.role == Role.ADMIN.value and not self._other_admins(user_id):
            raise _conflict("id", f"{user.username} is the last admin and cannot be deleted")
        orm.delete(s for s in self._e.WebSession if s.user_id == user_id)
        orm.delete(t for t in self._e.ApiToken if t.user_id == user_id)
        user.delete()
        self._audit(audit)

    @db_session
    def password_hash_of(self, username: str) -> tuple[UserRecord, str | None] | None:
        """The user named ``username`` and their password hash (for a login), or ``None``."""
        user = self._e.User.get(username=username)
        return None if user is None else (self._user_record(user), user.password_hash)

    @db_session
    def set_password_hash(self, user_id: int, password_hash: str) -> None:
        """Store a re-hashed password (stronger parameters) without ending sessions."""
        self._user(user_id).password_hash = password_hash

    # -- sessions ----------------------------------------------------------------------------

    @db_session
    def create_session(
        self,
        user_id: int,
        session_hash: str,
        *,
        expires_at: datetime,
        audit: AuditNote | None = None,
    ) -> None:
        self._user(user_id)
        now = utcnow()
        orm.delete(s for s in self._e.WebSession if s.expires_at < now)
        self._e.WebSession(
            token_hash=session_hash, user_id=user_id, created_at=now, expires_at=to_db(expires_at)
        )
        self._audit(audit)

    @db_session
    def delete_session(self, session_hash: str, *, audit: AuditNote | None = None) -> None:
        """End a web session (logout); an unknown one is already ended."""
        orm.delete(s for s in self._e.WebSession if s.token_hash == session_hash)
        self._audit(audit)

    @db_session
    def session_user(self, session_hash: str, now: datetime) -> UserRecord | None:
        """The user of a live web session, or ``None`` (unknown, expired, or the user gone)."""
        session = self._e.WebSession.get(token_hash=session_hash)
        if session is None or session.expires_at <= to_db(now):
            return None
        user = self._e.User.get(id=session.user_id)
        return None if user is None else self._user_record(user)

    # -- personal API tokens -----------------------------------------------------------------

    def _token_record(self, t: Any, usernames: dict[int, str]) -> TokenRecord:
        return TokenRecord(
            id=t.id,
            name=t.name,
            user_id=t.user_id,
            username=usernames.get(t.user_id, ""),
            created_at=t.created_at.replace(tzinfo=UTC),
            expires_at=aware(t.expires_at),
        )

    def _usernames(self) -> dict[int, str]:
        return {int(u.id): str(u.username) for u in self._e.User.select()}

    @db_session
    def add_token(
        self,
        name: str,
        token_hash: str,
        *,
        user_id: int,
        expires_at: datetime | None = None,
        builtin: bool = False,
        audit: AuditNote | None = None,
    ) -> TokenRecord:
        """Store a token's digest for ``user_id``; ``builtin`` marks the first-start admin
        token, which cannot be revoked (and whose owner stays an undeletable admin)."""
        self._user(user_id)
        token = self._e.ApiToken(
            name=name,
            token_hash=token_hash,
            created_at=utcnow(),
            user_id=user_id,
            expires_at=None if expires_at is None else to_db(expires_at),
            builtin=builtin,
        )
        orm.flush()
        self._audit(audit, token.id)
        return self._token_record(token, self._usernames())

    @db_session
    def has_tokens(self) -> bool:
        return bool(self._e.ApiToken.select().exists())

    @db_session
    def list_tokens(self, user_id: int | None = None) -> list[TokenRecord]:
        """The tokens of ``user_id`` (``None``: everyone's), oldest first."""
        ApiToken = self._e.ApiToken
        query = ApiToken.select().order_by(ApiToken.id)
        if user_id is not None:
            query = query.filter(lambda t: t.user_id == user_id)
        usernames = self._usernames()
        return [self._token_record(t, usernames) for t in query]

    @db_session
    def delete_token(
        self, token_id: int, *, owner_id: int | None = None, audit: AuditNote | None = None
    ) -> TokenRecord:
        """Revoke a token (of ``owner_id`` only, unless ``None``). Raises NotFound."""
        token = self._e.ApiToken.get(id=token_id)
        if token is None or (owner_id is not None and token.user_id != owner_id):
            raise NotFound("token", token_id)
        if token.builtin:
            raise _conflict("id", _BUILTIN_TOKEN)
        record = self._token_record(token, self._usernames())
        token.delete()
        self._audit(audit)
        return record

    @db_session
    def token_user(self, token_hash: str, now: datetime) -> UserRecord | None:
        """The owner of a live API token, or ``None`` (unknown, expired, or the owner gone)."""
        token = self._e.ApiToken.get(token_hash=token_hash)
        if token is None or token.user_id is None:
            return None
        if token.expires_at is not None and token.expires_at <= to_db(now):
            return None
        user = self._e.User.get(id=token.user_id)
        return None if user is None else self._user_record(user)

    # -- the audit log -----------------------------------------------------------------------

    @db_session
    def add_audit(self, note: AuditNote) -> None:
        """Append an entry that records no stored change (a failed login, a terminate)."""
        self._audit(note)

    @db_session
    def list_audit(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        before: int | None = None,
        limit: int = 100,
    ) -> tuple[list[AuditRecord], int | None]:
        """Entries newest first, filtered; and the ``before`` of the next page (or ``None``)."""
        Entry = self._e.AuditEntry
        query = Entry.select()
        if actor is not None:
            query = query.filter(lambda e: e.actor == actor)
        if action is not None:
            query = query.filter(lambda e: e.action == action)
        if since is not None:
            start = to_db(since)
            query = query.filter(lambda e: e.at >= start)
        if until is not None:
            end = to_db(until)
            query = query.filter(lambda e: e.at < end)
        if before is not None:
            query = query.filter(lambda e: e.id < before)
        rows = list(query.order_by(orm.desc(Entry.id))[: limit + 1])
        items = [
            AuditRecord(
                id=e.id,
                at=e.at.replace(tzinfo=UTC),
                actor=e.actor,
                action=e.action,
                target_type=e.target_type,
                target_id=e.target_id,
                details=dict(e.details or {}),
                source_ip=e.source_ip,
                outcome=e.outcome,
            )
            for e in rows[:limit]
        ]
        return items, (items[-1].id if len(rows) > limit else None)
