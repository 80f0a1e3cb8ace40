"""The design documents' `PipelineCommunicator`, over tagentd's broker (docs/broker.md, "PipelineCommunicator").

`PipelineCommunicator` (async) speaks for one pipeline: a step's (`ctx.communicator`) or the one an
`AsyncClient` acts as (`client.communicator(as_pipeline=...)`); `SyncPipelineCommunicator` is the same for the
blocking `Client`. Both turn the documents' calls into broker requests carried by a port (`ports.py`): the
step's context, or the client.
"""
