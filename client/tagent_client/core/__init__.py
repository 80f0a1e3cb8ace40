"""The pure kernel shared with the daemon: the run state machine and its state, events and result, and the
broker's mailboxes and spaces. No I/O and no sockets; the machine and the broker are given the time. Only
`receivers` awaits (it parks a step's receive until a message comes)."""
