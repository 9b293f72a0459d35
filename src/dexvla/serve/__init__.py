"""Policy serving: openpi-compatible websocket server, client and msgpack-numpy protocol.

Import the submodules directly; `dexvla.serve.client` needs only websockets, msgpack and numpy.
"""
