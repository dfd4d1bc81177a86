"""The composition root of `endpoint-agent run`: each part built once; parts register, none reaches in.

    service = build_service(settings)      # service.store, .policy, .collector, .guard, .agent, ...
    run_jobs(stop, service.jobs(), on_state=service.write_status)   # endpoint_agent/daemon.py
    service.close()

Adding a part (an exec gate, a DNS filter, ...):

1. In your own package, write a builder `def my_part(service: Service) -> Part | None`. It reads
   what it needs from the root's references (`service.settings`, `.clock`, `.store`, `.policy`,
   `.collector`, `.guard`, `.enforcer`, `.notifier`, `.circuit`, `.break_glass`, `.agent`), builds
   its objects once, and returns None when it is off or cannot run here (say why in the log).
   Import heavy modules inside the builder, so a service that does not use the part never loads
   them.
2. It returns `Part(name, jobs=[JobSpec(...)], status=..., close=...)`: scheduled jobs (each
   wrapped so one failing run is logged and the next goes ahead; `at_shutdown` runs once after
   the scheduler stopped), a status callable shown under `name` in status.json, and an
   idempotent `close` run last at shutdown (newest part first).
3. It listens instead of being called by others: `service.policy_activated.connect(fn)` runs `fn`
   (in the policy sync thread) each time a new policy was activated. A new kind of event is a new
   `Signal` attribute on `Service`, emitted by the part that knows it happened.
4. Add the builder to `PART_BUILDERS` in endpoint_agent/service/build.py (the order there is the
   order of registration, jobs and shutdown).
"""

from endpoint_agent.service.build import (
    PART_BUILDERS,
    PartBuilder,
    build_policy_source,
    build_service,
    open_store,
)
from endpoint_agent.service.part import JobSpec, Part, Signal, guarded
from endpoint_agent.service.root import Service
from endpoint_agent.service.status_file import write_status

__all__ = [
    "PART_BUILDERS",
    "JobSpec",
    "Part",
    "PartBuilder",
    "Service",
    "Signal",
    "build_policy_source",
    "build_service",
    "guarded",
    "open_store",
    "write_status",
]
