"""The bounds of one GetPages message, shared by the pageserver and its clients.

A request message carries at most MAX_PAGES_PER_MESSAGE page requests; one with
more ends the stream with INVALID_ARGUMENT naming the cap (100,000 pages in one
message once drove a pageserver to 2.6 GB before the answer failed to send).
The answers to a message are sent as they are built, in response messages of at
most RESPONSE_MESSAGE_BYTES each (every one but the last has `more` set), so a
stream holds at most about one response message in memory however large the
pages, and every message fits gRPC's default 4 MiB receive limit.
"""

from __future__ import annotations

MAX_PAGES_PER_MESSAGE = 1024
# Under gRPC's default 4 MiB receive limit, with room for the message framing.
RESPONSE_MESSAGE_BYTES = 4 * 1024 * 1024 - 64 * 1024
# What one PageResult costs on the wire besides its page bytes (tags, lengths,
# the LSN varint), counted generously so a message never passes the bound.
RESULT_OVERHEAD_BYTES = 32
