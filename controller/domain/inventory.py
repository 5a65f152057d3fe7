"""What a decision writes, and what the app then owns: the plan between a decision and the
Kubernetes edge.

The controller deletes only objects it created and recorded for the app (its inventory). The
plan lists, per action, the objects to apply and the recorded objects to delete, and the
inventory before the writes (everything about to be applied is recorded first, so a kill
between two writes leaves nothing unrecorded) and after them (minus what was deleted).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from controller.domain.machine import Action, Owned
from controller.domain.render import Key, Rendered, key_of
from controller.domain.types import KubeObject

STABLE, VARIANT, EARLY = "stable", "variant", "early"


@dataclass(frozen=True)
class Step:
    action: Action
    apply: tuple[KubeObject, ...] = ()
    delete: tuple[Owned, ...] = ()


@dataclass(frozen=True)
class Plan:
    steps: tuple[Step, ...]
    intent: tuple[Owned, ...]  # the inventory to record before the first write
    after: tuple[Owned, ...]  # the inventory once every step is done

    @property
    def applies(self) -> tuple[KubeObject, ...]:
        return tuple(obj for step in self.steps for obj in step.apply)


def owned(obj: KubeObject, role: str) -> Owned:
    kind, namespace, name = key_of(obj)
    return Owned(str(obj.get("apiVersion", "v1")), kind, namespace, name, role)


def plan(actions: Iterable[Action], rendered: Rendered, inventory: tuple[Owned, ...],
         first_deployment: bool, desired: Collection[Key], prune: bool = True) -> Plan:
    """The writes of `actions`, in order. During a canary nothing that stable reads changes:
    only new ConfigMaps/Secrets go first (everything, on a first deployment: there is no
    stable); the rest waits for the promotion. A reject deletes the variants and the objects
    created early for the canary that git no longer has. With `prune`, applying stable
    deletes what the app applied before and git no longer has — a workload once its removal
    is promoted, anything else with the commit that removed it — and never anything outside
    the inventory."""
    steps: list[Step] = []
    roles: dict[Key, Owned] = {o.key: o for o in inventory}
    for action in actions:
        if action is Action.APPLY_STABLE:
            objects = (*rendered.passthrough, *rendered.deferred, *rendered.stable)
            gone = tuple(o for o in roles.values() if prune and o.role in (STABLE, EARLY)
                         and o.key not in desired)
            steps.append(Step(action, objects, gone))
            roles.update({key_of(o): owned(o, STABLE) for o in objects})
        elif action is Action.APPLY_VARIANTS:
            first = rendered.passthrough if first_deployment else rendered.early
            variants = (*rendered.baseline, *rendered.canary)
            wanted = set(rendered.variant_keys)
            stale = tuple(o for o in roles.values() if o.role == VARIANT and o.key not in wanted)
            steps.append(Step(action, (*first, *variants), stale))
            for obj in first:
                if key_of(obj) not in roles:
                    roles[key_of(obj)] = owned(obj, STABLE if first_deployment else EARLY)
            roles.update({key_of(o): owned(o, VARIANT) for o in variants})
        elif action is Action.DELETE_VARIANTS:
            gone = tuple(o for o in roles.values() if o.role == VARIANT or
                         (o.role == EARLY and o.key not in desired))
            steps.append(Step(action, (), gone))
    intent = tuple(sorted(roles.values(), key=lambda o: o.key))
    deleted = {o.key for step in steps for o in step.delete}
    after = tuple(o for o in intent if o.key not in deleted)
    return Plan(tuple(steps), intent, after)
