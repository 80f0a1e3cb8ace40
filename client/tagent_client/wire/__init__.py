"""What crosses the daemon's sockets: the control and broker protocols (msgspec types, pure), and where the
sockets and the daemon's state live (paths)."""
