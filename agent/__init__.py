"""The Ridgeline agent: the daemon on every managed computer. It registers with the
server, exchanges messages with it, stores every operation durably before running
it, and dispatches messages to handler plugins."""
