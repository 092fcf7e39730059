"""The core's boundaries: typed Protocols and frozen records, each in a small module.

Dependencies point one way: adapters -> core -> ports <- storage. The records (`records`)
are what the store hands back; the store ports (`store`) are what the chat service calls, by
role; `locks` is the conversation lock; `sinks` the reply sink's optional capabilities;
`platform` what the service runs for each platform. Nothing here imports the core's policy,
a storage implementation or an adapter.
"""
