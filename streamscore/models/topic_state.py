"""What the model topic says is active: one pure fold of its envelopes, in topic order.

Every reader of the model topic asks it: a worker's updater (live, and at start-up over
the whole topic), the publisher (what a rollback or retire replaces, which archive a
rollback or ``--from-archive`` re-publishes), ``streamscore train`` (the current primary
to beat) and the feedback worker's auto-promotion (is the shadow still the shadow).

:class:`TopicState` holds, per role key ``<name>/<role>``, a :class:`RoleState` (the
current version and the record that made it, the newest version the role has had) and,
per ``(name, version)``, the archive records. :meth:`TopicState.admit` takes one envelope
under the rules below and raises a typed :class:`~streamscore.core.errors.ModelError`
for a record that breaks them; :func:`fold` runs a whole topic through it, skipping (and
logging) what it rejects, as workers do.

Rules for role records (the same live and at start-up, and for publishers computing what
to replace); every record is verified first (envelope signature over all its fields by a
key of the keyring, and the artifact's sha256: :func:`~streamscore.models.envelope.verify`):

- activate: the version must be above every version the role has had (a replayed
  older record, or a rolled-back or retired version, is ``stale_version``);
- rollback: must name, as ``target_version``, the role's current version, and go
  below it (``stale_rollback`` otherwise: e.g. an old rollback replayed later);
- retire: must name the role's current version (``stale_retire``);
- the record last accepted for the role, seen again, is a no-op (not a rejection).

The first record seen for a role is taken as the role's state (a compacted topic may
hold nothing older). Nothing is recorded for a rejected envelope. Archives are never
served: they are kept as read and checked when asked for (:meth:`TopicState.archive`:
artifact signature, and the envelope's unless asked not to, for records from before
envelopes were signed).

Pure: no Kafka imports, no I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..core.errors import ModelError, StaleModelVersionError, StaleRetireError, StaleRollbackError
from ..core.records import Role
from .container import verify_signature
from .envelope import Action, ModelEnvelope, role_key, verify
from .signing import Verifier

__all__ = ["RoleState", "TopicState", "fold"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class RoleState:
    """What a role's accepted history says: ``current`` is the version of its last
    accepted record (None: retired, or nothing yet) and ``record`` that record (None
    likewise); ``newest`` is the highest version the role has had (rollback and retire
    targets included)."""

    current: int | None = None
    newest: int = 0
    last: tuple[Any, ...] | None = None
    record: ModelEnvelope | None = None


def _identity(env: ModelEnvelope) -> tuple[Any, ...]:
    return (env.action, env.version, env.rollback, env.target_version, env.sha256)


class TopicState:
    """The model topic's state, fed envelopes in topic order (see the module docstring
    for the rules)."""

    def __init__(self, verifier: Verifier) -> None:
        self._verifier = verifier
        self._roles: dict[str, RoleState] = {}
        self._archives: dict[tuple[str, int], list[ModelEnvelope]] = {}

    def role(self, name: str, role: Role) -> RoleState:
        """The state of ``name``'s ``role`` (an empty state if it never had a record)."""
        return self._roles.get(role_key(name, role)) or RoleState()

    def admit(self, env: ModelEnvelope) -> bool:
        """Take ``env``. True: act on it (the role's state now includes it); False: a
        repeat of the role's last record, or an archive (kept, never served): nothing to
        do. Raises a typed ModelError for a role record that is not signed or does not
        follow the role's history (the state is unchanged)."""
        if env.action is Action.ARCHIVE:
            self._archives.setdefault((env.model_name, env.version), []).append(env)
            return False
        verify(env, self._verifier)
        st = self._roles.setdefault(env.key, RoleState())
        ident = _identity(env)
        if st.last == ident:
            return False
        target = env.target_version
        where = f"{env.key} v{env.version}"
        if env.action is Action.RETIRE:
            if target is None or (st.last is not None and target != st.current):
                raise StaleRetireError(
                    f"retire of {env.model_name}/{env.role.value} v{target} does not match "
                    f"the current version ({_v(st.current)}; a replayed record?)",
                    current=st.current,
                    newest=st.newest,
                )
        elif env.rollback:
            if target is None or env.version >= target:
                raise StaleRollbackError(
                    f"rollback {where} must name the higher version it replaces "
                    f"(names {_v(target)})",
                    current=st.current,
                    newest=st.newest,
                )
            if st.last is not None and target != st.current:
                raise StaleRollbackError(
                    f"rollback {where} replaces v{target} but the current version is "
                    f"{_v(st.current)} (a replayed record?)",
                    current=st.current,
                    newest=st.newest,
                )
        elif env.version <= st.newest:
            raise StaleModelVersionError(
                f"{where} is not newer than v{st.newest}, the newest this role has had "
                "(a replayed record? a rollback needs a signed rollback record)"
            )
        retired = env.action is Action.RETIRE
        st.current = None if retired else env.version
        st.record = None if retired else env
        st.newest = max(st.newest, env.version, target or 0)
        st.last = ident
        return True

    def archive(
        self, name: str, version: int, *, role: Role | None = None, envelope_signed: bool = True
    ) -> ModelEnvelope | None:
        """The newest archive record of ``name`` v``version`` (published as ``role``, if
        given) whose artifact signature verifies and, unless ``envelope_signed`` is
        False, whose envelope verifies too; None if there is none. ``envelope_signed=False``
        is the upgrade path for records from before envelopes were signed (``model
        publish --from-archive``): the artifact signature still has to hold."""
        for env in reversed(self._archives.get((name, version), ())):
            if role is not None and env.role is not role:
                continue
            try:
                if envelope_signed:
                    verify(env, self._verifier)
                verify_signature(env.artifact, env.signature, env.key_id, self._verifier)
            except ModelError as exc:
                log.warning("skipping archived %r: %s", env, exc)
                continue
            return env
        return None

    def archived_versions(self, name: str) -> list[int]:
        """The versions of ``name`` with at least one archive record (checked or not),
        ascending."""
        return sorted(v for n, v in self._archives if n == name)


def fold(
    envelopes: Iterable[ModelEnvelope], verifier: Verifier, *, name: str | None = None
) -> TopicState:
    """The state after ``envelopes`` (in topic order; only ``name``'s when given), with
    what :meth:`TopicState.admit` rejects logged and skipped, as workers skip it."""
    state = TopicState(verifier)
    for env in envelopes:
        if name is not None and env.model_name != name:
            continue
        try:
            state.admit(env)
        except ModelError as exc:
            log.info("ignoring model record %r: %s", env, exc)
    return state


def _v(version: int | None) -> str:
    return "none" if version is None else f"v{version}"
