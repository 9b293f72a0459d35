"""The server's default limits, apart from the server so that `dexvla --help` stays light."""

DEFAULT_MAX_MESSAGE_BYTES = 32 * 2**20
DEFAULT_MAX_CONNECTIONS = 32
DEFAULT_OPEN_TIMEOUT_S = 10.0
DEFAULT_PING_INTERVAL_S = 20.0
DEFAULT_PING_TIMEOUT_S = 20.0
CLOSE_TIMEOUT_S = 5.0
TRANSPORT_LIMIT_FACTOR = 2
"""Frames up to this many times the message limit get an error reply; larger ones close the
connection (websockets' close code 1009) before they are read into memory."""
MAX_QUEUED_FRAMES = 1
"""Frames read ahead per connection before reading pauses: one request is served at a time,
so a peer that floods frames holds at most this many (and one in flight) in memory."""
