"""The contract shared by Ridgeline's agent and server: Landscape's message system.

An agent POSTs a bpickled exchange request (its queued messages, numbered) to
the server's ``/message-system`` URL at intervals; the server answers with its
own messages for that agent and acknowledges what it took. Both sides import
this package and never redefine what is here. Nothing here does I/O or imports
Twisted. Modules:

- ``protocol.bpickle``: the wire encoding; a strict decoder that raises only
  ``DecodeError`` (with the byte offset) for bad input.
- ``protocol.codes``: operation status and result codes.
- ``protocol.messages``: every message type Ridgeline sends or accepts: schemas
  that validate and normalise a decoded message (``MessageError`` names the first
  bad field) and builders that produce exactly the wire types landscape-client needs.
- ``protocol.exchange``: the request/response payloads, the accepted-types digest,
  and the sequence rules of both directions as pure functions.

The reference is ``spec/message-system.md`` (its section R is binding).
"""
