"""The contract shared by Ridgeline's agent and server: Landscape's message system.

Nothing here does I/O or imports Twisted. Modules:

- ``protocol.bpickle``: the wire encoding (strict decoder).
- ``protocol.codes``: operation status and result codes.
- ``protocol.messages``: schemas of every message type Ridgeline sends or accepts.
- ``protocol.exchange``: exchange request/response payloads and the sequence rules.
"""
