"""The walservice (a safekeeper): durably sequences WAL records per timeline and
streams them to the pageserver.

Modules, by role: `segment` and `control_file` (on-disk formats), `wal_storage`
(a timeline's files: recovery, writes, reads), `sequencer` (LSN assignment and
group commit), `timelines` (the set a node holds), `offload` (WAL upload to
remote storage and trimming), `service` (gRPC), `server` (the process).
"""
