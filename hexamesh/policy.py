"""The operator's policy: the config's ``[policy]`` section, as the parts use it.

Routing weights and levels (``serve.router.RoutingPolicy``, the affinity
weight of ``serve.affinity`` among them), priority rules
(``serve.priority.PriorityPolicy``) and swarmscale's thresholds
(``placement.swarmscale.ScaleConfig``) are each a frozen dataclass with the
defaults the design names; :func:`policy_of` fills them from an
``AgentConfig`` (already validated there, with the config's errors).
"""

from __future__ import annotations

from dataclasses import dataclass

from hexamesh.config import AgentConfig
from hexamesh.placement.swarmscale import ScaleConfig
from hexamesh.serve.priority import PriorityPolicy
from hexamesh.serve.router import Priority, RoutingPolicy

__all__ = ["Policy", "policy_of"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    routing: RoutingPolicy
    priorities: PriorityPolicy
    scale: ScaleConfig
    scale_replicas: int  # replicas one swarmscale vote asks for
    job_retention: float  # s


def policy_of(config: AgentConfig) -> Policy:
    return Policy(
        routing=RoutingPolicy(
            weight_load=config.policy_weight_load,
            weight_match=config.policy_weight_match,
            weight_proximity=config.policy_weight_proximity,
            weight_affinity=config.policy_weight_affinity,
            saturated=config.policy_saturated,
            stability_weight=config.policy_stability_weight,
            low_max_load=config.policy_low_max_load,
        ),
        priorities=PriorityPolicy(
            default=Priority(config.policy_default_priority),
            client_max=Priority(config.policy_client_max_priority),
            scheduling=config.policy_priority_scheduling,
            low_reserve=config.policy_low_reserve,
        ),
        scale=ScaleConfig(
            add_load=config.policy_scale_add_load,
            add_queue=config.policy_scale_add_queue,
            add_ttft=config.policy_scale_add_ttft,
            drop_load=config.policy_scale_drop_load,
            drop_queue=config.policy_scale_drop_queue,
            drop_after=config.policy_scale_drop_after,
        ),
        scale_replicas=config.policy_scale_replicas,
        job_retention=config.job_retention,
    )
