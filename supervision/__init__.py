"""Supervision work done on the desk under rules of law: leave requests and approvals
(SPEC §12). `leave_rules` decides (pure functions), `leave` is the leave document and the
permit it becomes, `leave_store` keeps leaves and their steps beside the registry."""
