"""Learning policy per scope: who must agree before a group learns, and when to trigger.

Defaults are the brief's: a ``user:`` group learns from one explanation or edit;
``team:`` needs 3 distinct users, ``org:`` 5 and approval; ``global`` waits for
approval. One user's weight in any group wider than ``user:`` is capped.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ScopePolicy(BaseModel):
    """Thresholds for one scope (``user``, ``team``, ``org``, ``global`` or derived)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_users: int = Field(default=1, ge=1, description="distinct users behind a rule")
    min_evidence: int = Field(default=1, ge=1, description="explanations/edits before triggering")
    max_user_weight: float = Field(
        default=1.0, gt=0, le=1, description="largest share of evidence one user may carry"
    )
    requires_approval: bool = False
    downvote_rate_jump: float = Field(default=0.3, gt=0, le=1)
    min_ratings_for_rate: int = Field(default=10, ge=1)
    tool_failure_rate: float = Field(default=0.5, gt=0, le=1)
    min_tool_calls: int = Field(default=5, ge=1)
    max_staleness_s: float = Field(default=86_400.0, gt=0)


class LearningPolicy(BaseModel):
    """Per-scope policies; derived scopes use ``derived`` unless named explicitly."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    user: ScopePolicy = ScopePolicy()
    team: ScopePolicy = ScopePolicy(min_users=3, min_evidence=3, max_user_weight=0.5)
    org: ScopePolicy = ScopePolicy(
        min_users=5, min_evidence=5, max_user_weight=0.34, requires_approval=True
    )
    global_: ScopePolicy = Field(
        default=ScopePolicy(
            min_users=5, min_evidence=5, max_user_weight=0.34, requires_approval=True
        ),
        alias="global",
    )
    derived: ScopePolicy = ScopePolicy(min_users=3, min_evidence=3, max_user_weight=0.5)

    def for_scope(self, scope: str) -> ScopePolicy:
        if scope == "global":
            return self.global_
        found = getattr(self, scope, None) if scope in ("user", "team", "org") else None
        return found if isinstance(found, ScopePolicy) else self.derived
