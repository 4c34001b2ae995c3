"""Realtime push: the broadcaster every process emits through (``broadcaster``) and the Socket.IO
handlers of a server process (``server``)."""
