"""The pure kernel shared with the daemon: the run state machine and its state, events and result, and the
broker's mailboxes and spaces. No I/O, no clock, no sockets; only `receivers` parks awaiting callers."""
